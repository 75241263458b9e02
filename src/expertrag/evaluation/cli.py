"""The ``expertrag eval`` sub-command: run pipelines over a QA set and write a report.

    expertrag eval --data items.jsonl --pipelines naive,crag,self-rag --out eval-report
    expertrag eval --data ../shared/data/hotpotqa/test.jsonl --limit 40 \\
        --abilities noise,negative,counterfactual,integration --out report
    expertrag eval --data questions.jsonl --db ./kb --collection handbook
    expertrag eval --data questions.jsonl --answers my_answers.jsonl

The data format is documented in docs/evaluation.md (and in ``--help``). Writes
``report.md``, ``summary.csv``, ``results.csv``, PNG plots and ``report.html`` into ``--out``;
scored items are cached in ``--out/cache`` (one file each, written atomically), so a killed
run started again resumes where it stopped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

JUDGES = ("context_relevance", "faithfulness", "answer_relevance")

_EPILOG = """data format: JSON lines, one question per line (docs/evaluation.md):
  {"question": "When was the lighthouse built?", "answer": "1862", "aliases": ["in 1862"], \
"gold": ["The lighthouse was built in 1862."], "distractors": ["The museum opened in 1990."]}
  "gold" holds the passages with the answer, "distractors" others (a passage is a string or
  {"text": ..., "id": ...}); without --db or --answers every line needs passages. With --db
  only "question" and "answer" are read: the pipelines retrieve from your collection.
  HotpotQA, MuSiQue and SQuAD 2.0 files are read as they are (--format).

--answers FILE: answers produced elsewhere, JSON lines matched to --data by "id" (else by
  "question"):
  {"id": "q1", "question": "When was the lighthouse built?", "answer": "In 1862 [1].", \
"contexts": ["The lighthouse was built in 1862."]}

examples:
  expertrag eval --data qa.jsonl --limit 20
  expertrag eval --data hotpot_dev.json --format hotpotqa --pipelines naive,crag --out report/
  expertrag eval --data questions.jsonl --db ./kb --collection handbook
  expertrag eval --data questions.jsonl --answers my_answers.jsonl --judges faithfulness"""


def add_eval_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    from expertrag.evaluation.robustness import ABILITIES
    from expertrag.evaluation.runner import PIPELINES

    p = subparsers.add_parser(
        "eval", help="evaluate RAG pipelines on a QA set and report",
        description="Evaluate RAG pipelines on a QA set (or answers you already have) and "
                    "write a report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument("--data", required=True, help="QA file: expertrag JSON lines (below), "
                   "HotpotQA, MuSiQue or SQuAD 2.0")
    p.add_argument("--format", default="auto",
                   choices=["auto", "jsonl", "hotpotqa", "musique", "squad"])
    p.add_argument("--limit", type=int, default=None, help="first N items")
    p.add_argument("--pipelines", default="naive",
                   help=f"comma-separated, from {', '.join(sorted(PIPELINES))}")
    p.add_argument("--abilities", default="plain",
                   help=f"conditions to build, comma-separated from {', '.join(ABILITIES)} "
                        "(only plain with --db or --answers)")
    p.add_argument("--judges", default=",".join(JUDGES),
                   help="expertrag judges to score with ('' for none); how to read each "
                        "score is written next to the figures in the report")
    p.add_argument("--db", default=None,
                   help="retrieve from this Chroma folder (your ingested collection) instead "
                        "of the passages in --data")
    p.add_argument("--collection", default=None,
                   help="collection in --db (default: expertrag)")
    p.add_argument("--embedding-model", default=None, metavar="MODEL",
                   help="embedder for --db (default: the one the collection was ingested "
                        "with)")
    p.add_argument("--k", type=int, default=5, help="passages to retrieve with --db")
    p.add_argument("--answers", default=None, metavar="FILE",
                   help="score these answers (JSON lines, see below) instead of running "
                        "pipelines")
    p.add_argument("--out", default="eval-report", help="report folder")
    p.add_argument("--batch", type=int, default=8, help="questions per batched call")
    p.add_argument("--model", default="smollm2-135m-instruct", help="LLM alias, path or id")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_eval)
    return p


def _positive(name: str, value: int | None) -> None:
    from expertrag.errors import InputError

    if value is not None and value < 1:
        raise InputError(f"--{name} must be a positive integer, got {value}")


def cmd_eval(args: argparse.Namespace) -> int:
    from expertrag.errors import InputError
    from expertrag.evaluation.datasets import load_eval_items
    from expertrag.evaluation.report import markdown_table, summarize, write_report
    from expertrag.evaluation.robustness import Case, robustness_cases
    from expertrag.evaluation.runner import PIPELINES, ResultCache, run_cases, score_answers

    for name in ("limit", "batch", "k"):
        _positive(name, getattr(args, name))
    if args.db and args.answers:
        raise InputError("--db and --answers exclude each other: --db runs pipelines over "
                         "your collection, --answers scores answers you already have")
    if args.collection and not args.db:
        raise InputError("--collection needs --db (the Chroma folder that holds it)")
    names = [n.strip() for n in args.pipelines.split(",") if n.strip()]
    unknown = [n for n in names if n not in PIPELINES]
    if not args.answers and (not names or unknown):
        raise InputError(f"unknown pipelines {unknown or names}; choose from "
                         f"{', '.join(sorted(PIPELINES))}")
    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    bad = [j for j in judges if j not in JUDGES]
    if bad:
        raise InputError(f"unknown judges {bad}; choose from {', '.join(JUDGES)}")
    abilities = [a.strip() for a in args.abilities.split(",") if a.strip()]
    own = bool(args.db or args.answers)
    if own and abilities != ["plain"]:
        raise InputError("--abilities other than plain build their passages from the data "
                         "file's gold and distractors; with --db or --answers only plain "
                         "applies")
    items = load_eval_items(args.data, args.format, require_passages=not own)
    if args.limit:
        items = items[: args.limit]
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder for the report")
    store = None
    if args.db:
        store = _open_store(args)
        cases = [Case(f"db:{it.id}", "own collection", it, []) for it in items]
    elif args.answers:
        given, cases = _given_answers(Path(args.answers), items)
    else:
        cases = robustness_cases(items, abilities)
    if not cases:
        raise InputError(f"{args.data}: no case could be built for abilities {args.abilities}")
    llm = _llm(args) if (not args.answers or set(judges) - {"answer_relevance"}) else None
    judge_objs = _judges(llm, judges)
    if args.answers:
        label = Path(args.answers).stem or "answers"
        results = score_answers(cases, given, name=label, judges=judge_objs)
    else:
        cache_dir = out / "cache"
        if store is not None:  # a store's answers are cached apart from the file's passages
            where = json.dumps([str(Path(args.db).resolve()), store.collection_name, args.k])
            cache_dir = cache_dir / ("db-" + hashlib.sha256(where.encode()).hexdigest()[:12])
        factories = {n: _with_k(PIPELINES[n], args.k) if store is not None else PIPELINES[n]
                     for n in names}
        results = run_cases(cases, factories, llm, cache=ResultCache(cache_dir),
                            judges=judge_objs, batch=args.batch, progress=not args.quiet,
                            retriever=store)
    written = write_report(results, out, title=f"expertrag eval: {Path(args.data).name}")
    print(markdown_table(summarize(results)))
    errors = sum(1 for r in results if r.error)
    print(f"{len(results)} scored items ({errors} with errors); report: "
          f"{written['report.html']} (it says how to read each score)")
    return 0


def _llm(args: argparse.Namespace) -> Any:
    from expertrag.experts import attach_shipped
    from expertrag.models.llm import ExpertLLM

    llm = ExpertLLM.from_pretrained(model=args.model)
    attach_shipped(llm)
    return llm


def _with_k(factory: Any, k: int) -> Any:
    """A pipeline factory that retrieves ``k`` passages (the built-ins take ``k=``; a
    registered factory without it keeps its own)."""
    import inspect

    try:
        takes_k = "k" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        takes_k = False
    if not takes_k:
        return factory

    def build(llm: Any, retriever: Any) -> Any:
        return factory(llm, retriever, k=k)
    return build


def make_store(db: str, collection: str, *, read_only: bool = True,
               embedding_model: str | None = None) -> Any:
    """The user's collection for ``--db`` (tests replace this with a fake-embedder store)."""
    from expertrag.retrieval import open_store

    return open_store(db, collection, read_only=read_only, embedding_model=embedding_model)


def _open_store(args: argparse.Namespace) -> Any:
    """The user's collection, read-only, with the embedder it was ingested with."""
    from expertrag.errors import EmptyCollectionError
    from expertrag.retrieval.store import DEFAULT_COLLECTION

    collection = args.collection or DEFAULT_COLLECTION
    store = make_store(args.db, collection, read_only=True,
                       embedding_model=args.embedding_model)
    if store.served_count() == 0:
        raise EmptyCollectionError(f"collection {collection!r} in {args.db} is empty: "
                                   "ingest documents first with `expertrag ingest FOLDER`")
    return store


def _given_answers(path: Path, items: list[Any]) -> tuple[list[Any], list[Any]]:
    """The ``--answers`` rows matched to the data items (by id, else by question), as
    (answers, cases) in the same order."""
    from expertrag.datasets import DataNotFoundError, DataRowError
    from expertrag.errors import InputError
    from expertrag.evaluation.robustness import Case
    from expertrag.evaluation.runner import GivenAnswer
    from expertrag.types import Document

    if not path.is_file():
        raise DataNotFoundError(f"answers file {path} not found: pass a JSON-lines file "
                                "(see `expertrag eval --help`)")
    by_id = {it.id: it for it in items}
    by_question = {it.question.strip(): it for it in items}
    given, cases, seen = [], [], set()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read answers file {path}: {exc}") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataRowError(n, f"not valid JSON: {exc}", str(path)) from exc
        if not isinstance(row, dict) or not isinstance(row.get("answer"), str):
            raise DataRowError(n, "each line must be an object with a string 'answer'",
                               str(path))
        item = by_id.get(str(row["id"])) if "id" in row else None
        if item is None and isinstance(row.get("question"), str):
            item = by_question.get(row["question"].strip())
        if item is None:
            raise DataRowError(n, "matches no question of --data (by 'id' or 'question')",
                               str(path))
        if item.id in seen:
            raise DataRowError(n, f"a second answer to question {item.id!r}", str(path))
        seen.add(item.id)
        contexts = row.get("contexts") or []
        if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
            raise DataRowError(n, "'contexts' must be a list of strings", str(path))
        given.append(GivenAnswer(row["answer"], [Document(c) for c in contexts if c.strip()]))
        cases.append(Case(f"answers:{item.id}", "given answers", item, []))
    if not given:
        raise InputError(f"answers file {path} holds no answers")
    return given, cases


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
