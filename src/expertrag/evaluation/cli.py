"""The ``expertrag eval`` sub-command: run pipelines over a QA set and write a report.

    expertrag eval --data items.jsonl --pipelines naive,crag,self-rag --out eval-report
    expertrag eval --data ../shared/data/hotpotqa/test.jsonl --limit 40 \\
        --abilities noise,negative,counterfactual,integration --out report

Writes ``report.md``, ``summary.csv``, ``results.csv``, PNG plots and ``report.html`` into
``--out``; scored items are cached in ``--out/cache`` (one file each, written atomically), so
a killed run started again resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

JUDGES = ("context_relevance", "faithfulness", "answer_relevance")


def add_eval_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    from expertrag.evaluation.robustness import ABILITIES
    from expertrag.evaluation.runner import PIPELINES

    p = subparsers.add_parser(
        "eval", help="evaluate RAG pipelines on a QA set and report",
        description="Evaluate RAG pipelines on a QA set and write a report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  expertrag eval --data qa.jsonl --limit 20\n"
               "  expertrag eval --data hotpot_dev.json --format hotpotqa "
               "--pipelines naive,crag --out report/",
    )
    p.add_argument("--data", required=True, help="QA file: expertrag JSON lines, HotpotQA, "
                   "MuSiQue or SQuAD 2.0 (see expertrag.evaluation.datasets.load_eval_items)")
    p.add_argument("--format", default="auto",
                   choices=["auto", "jsonl", "hotpotqa", "musique", "squad"])
    p.add_argument("--limit", type=int, default=None, help="first N items")
    p.add_argument("--pipelines", default="naive",
                   help=f"comma-separated, from {', '.join(sorted(PIPELINES))}")
    p.add_argument("--abilities", default="plain",
                   help=f"conditions to build, comma-separated from {', '.join(ABILITIES)}")
    p.add_argument("--judges", default=",".join(JUDGES),
                   help="expertrag judges to score with ('' for none)")
    p.add_argument("--out", default="eval-report", help="report folder")
    p.add_argument("--batch", type=int, default=8, help="questions per batched call")
    p.add_argument("--model", default="smollm2-135m-instruct", help="LLM alias, path or id")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    return p


def cmd_eval(args: argparse.Namespace) -> int:
    from expertrag.errors import InputError
    from expertrag.evaluation.datasets import load_eval_items
    from expertrag.evaluation.report import markdown_table, summarize, write_report
    from expertrag.evaluation.robustness import robustness_cases
    from expertrag.evaluation.runner import PIPELINES, ResultCache, run_cases

    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    unknown = [n for n in names if n not in PIPELINES]
    if not names or unknown:
        raise InputError(f"unknown pipelines {unknown or names}; choose from "
                         f"{', '.join(sorted(PIPELINES))}")
    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    bad = [j for j in judges if j not in JUDGES]
    if bad:
        raise InputError(f"unknown judges {bad}; choose from {', '.join(JUDGES)}")
    items = load_eval_items(args.data, args.format)
    if args.limit:
        items = items[: args.limit]
    cases = robustness_cases(items, [a.strip() for a in args.abilities.split(",")
                                     if a.strip()])
    if not cases:
        raise InputError(f"{args.data}: no case could be built for abilities {args.abilities}")
    from expertrag.experts import attach_shipped
    from expertrag.models.llm import ExpertLLM

    llm = ExpertLLM.from_pretrained(model=args.model)
    attach_shipped(llm)
    out = Path(args.out)
    judge_objs = _judges(llm, judges)
    results = run_cases(cases, {n: PIPELINES[n] for n in names}, llm,
                        cache=ResultCache(out / "cache"), judges=judge_objs,
                        batch=args.batch, progress=not args.quiet)
    written = write_report(results, out, title=f"expertrag eval: {Path(args.data).name}")
    print(markdown_table(summarize(results)))
    errors = sum(1 for r in results if r.error)
    print(f"{len(results)} scored items ({errors} with errors); report: "
          f"{written['report.html']}")
    return 0


def _judges(llm: Any, names: list[str]) -> list[Any]:
    from expertrag.evaluation.judges import (
        AnswerRelevanceJudge,
        ContextRelevanceJudge,
        FaithfulnessJudge,
    )

    build = {"context_relevance": lambda: ContextRelevanceJudge(llm),
             "faithfulness": lambda: FaithfulnessJudge(llm),
             "answer_relevance": lambda: AnswerRelevanceJudge(llm)}
    return [build[n]() for n in names]
