"""Choose CRAG's refinement settings for answer accuracy, on the calibration slice only.

``calibrate_crag.py`` fits ``upper`` / ``lower`` for *action* accuracy (is a gold paragraph
among the retrieved ones). What users see is the answer, so this script runs the whole chain
(evaluate, refine, generate with grounded-qa) on HotpotQA test items 400-499 (the calibration
slice, never in bench_chains' answer sets), gold removed from half (seeded), for a grid of
``CRAGConfig`` overrides (thresholds, strip mode, floors, strip budget, order), and prints
accuracy on answerable questions, refusal accuracy on unanswerable ones and false refusals
for each (and, with ``--external``, recovery), beside naive RAG on the same questions.
Evaluator scores and generated answers are memoised by input, so a context that two settings
share is generated once.

    python benchmarks/tune_crag.py --data-dir ../shared/data [--n 100] [--k 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


# settings tried by default: the shipped thresholds with more documents kept for refinement,
# whole passages or sentence strips, in retrieval or evaluator-score order
DEFAULT_GRID: list[dict[str, Any]] = [
    {},
    {"strips": "passage"},
    *[{"strips": "passage", "doc_floor": f, "strip_floor": f, "order": o}
      for f in (0.5, 0.0) for o in ("retrieval", "best-first", "best-last")],
    {"strips": "sentences", "doc_floor": 0.0, "strip_floor": 0.5, "max_strips": 10,
     "order": "best-first"},
]


class MemoEvaluator:
    """Wraps a reranker; each (query, text) pair is scored once."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.memo: dict[tuple[str, str], float] = {}

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        missing = list(dict.fromkeys(p for p in pairs if p not in self.memo))
        if missing:
            self.memo.update(zip(missing, self.inner.score_pairs(missing), strict=True))
        return [self.memo[p] for p in pairs]

    def __repr__(self) -> str:
        return repr(self.inner)


class MemoLLM:
    """Forwards to an ExpertLLM; plain ``generate`` calls are memoised per conversation."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.memo: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, convs: list[Any], **kwargs: Any) -> list[Any]:
        keys = [json.dumps([c, sorted(kwargs.items())], default=str) for c in convs]
        todo = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if todo:
            first = {k: c for k, c in zip(keys, convs, strict=True)}
            for s in range(0, len(todo), 8):
                part = todo[s:s + 8]
                self.memo.update(zip(part, self.inner.generate([first[k] for k in part],
                                                               **kwargs), strict=True))
        return [self.memo[k] for k in keys]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--start", type=int, default=400)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--grid", type=Path,
                        help="JSON lines, each a dict of CRAGConfig overrides (default: "
                             "DEFAULT_GRID)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--no-naive", action="store_true", help="skip the naive RAG row")
    parser.add_argument("--external", action="store_true",
                        help="give CRAG bench_chains' external corpus and report the share of "
                             "unanswerable-internally questions it answers right")
    args = parser.parse_args()

    from _common import figures, hotpot_setup, recovered
    from _common import print_table as _print

    from expertrag import ExpertLLM
    from expertrag.chains.corrective import CorrectiveRAG, CRAGConfig
    from expertrag.chains.naive import RAGPipeline
    from expertrag.embeddings import Embedder
    from expertrag.experts import attach_shipped
    from expertrag.rerank.llm import LLMReranker

    base = ExpertLLM().load()
    attach_shipped(base)
    llm = MemoLLM(base)
    evaluator = MemoEvaluator(LLMReranker.with_relevance_expert(base))
    items, routed, external, has_answer = hotpot_setup(args.data_dir, args.n, Embedder(),
                                                       args.k, args.start)
    questions = [it.question for it in items]
    started = time.perf_counter()
    rows = []
    if not args.no_naive:
        naive = RAGPipeline(llm, routed, k=args.k, expert="grounded-qa", max_new_tokens=64)
        rows.append(("naive RAG", figures(naive.answer_many(questions), items, has_answer,
                                          1.0)))
        print(f"naive: {time.perf_counter() - started:.0f} s", flush=True)
    grid = ([json.loads(line) for line in args.grid.read_text().splitlines() if line.strip()]
            if args.grid else DEFAULT_GRID)
    for overrides in grid:
        cfg = CRAGConfig(**{"k": args.k, **overrides})
        chain = CorrectiveRAG(llm, routed, evaluator=evaluator, config=cfg,
                              external=external if args.external else None)
        t0 = time.perf_counter()
        results = chain.answer_many(questions)
        f = figures(results, items, has_answer, 1.0)
        f["incorrect_on_answerable"] = sum(r.action == "incorrect" for r, h in zip(
            results, has_answer, strict=True) if h) / max(1, sum(has_answer))
        if args.external:
            f["recovered"] = recovered(results, items, has_answer)
        label = " ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
        rows.append((label, f))
        print(f"{label}: acc {f['accuracy']:.3f} refusal {f['refusal_accuracy']:.3f} "
              f"false {f['false_refusals']:.3f} incorrect-on-answerable "
              f"{f['incorrect_on_answerable']:.3f} "
              f"recovered {f.get('recovered', float('nan')):.3f} "
              f"({time.perf_counter() - t0:.0f} s)",
              flush=True)
    print()
    _print(["setting", "accuracy (answerable)", "refusal acc", "false refusals", "recovered"],
           [[label, *(f"{f.get(k, float('nan')):.3f}" for k in (
               "accuracy", "refusal_accuracy", "false_refusals", "recovered"))]
            for label, f in rows])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
