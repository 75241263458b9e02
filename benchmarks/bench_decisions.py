"""The relevance expert through LangChain's decision-model interface vs through the reranker.

``ExpertDecisionModel.batch`` with :func:`relevance_questions` and
``LLMReranker.with_relevance_expert(...).score_pairs`` score the same (question, passage)
pairs with the same expert, prompt, labels and batch size. The benchmark checks that the
scores are the same (largest absolute difference) and measures pairs/s of each, run in
alternation on one loaded model (warm-up first), and prints the ratio decision / reranker
per round and its median.

Pairs: the sample questions (``expertrag/data/sample_questions.txt``) against the paragraphs
of the sample corpus (``expertrag/data/sample_corpus``), in order, cycling, ``--pairs`` of
them.

    python benchmarks/bench_decisions.py --pairs 64 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from importlib import resources
from pathlib import Path


def sample_pairs(n: int) -> list[tuple[str, str]]:
    data = Path(str(resources.files("expertrag"))) / "data"
    questions = [q.strip() for q in (data / "sample_questions.txt").read_text().splitlines()
                 if q.strip()]
    paragraphs = []
    for path in sorted((data / "sample_corpus").glob("*.md")):
        paragraphs += [p.strip() for p in path.read_text().split("\n\n")
                       if len(p.split()) >= 8 and not p.lstrip().startswith("#")]
    pairs = [(q, p) for p in paragraphs for q in questions]
    return [pairs[i % len(pairs)] for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="rows per forward pass (both)")
    args = ap.parse_args()

    import torch

    from expertrag.models import ExpertLLM
    from expertrag.rerank.llm import LLMReranker
    from langchain_expertrag import ExpertDecisionModel, relevance_questions

    pairs = sample_pairs(args.pairs)
    llm = ExpertLLM.shared()
    reranker = LLMReranker.with_relevance_expert(llm, batch_size=args.batch)
    decisions = ExpertDecisionModel.from_core(llm, batch_size=args.batch)
    questions = relevance_questions()
    requests = [{"state": {"question": q, "passage": p}, "questions": questions}
                for q, p in pairs]

    def via_reranker() -> list[float]:
        return reranker.score_pairs(pairs)

    def via_decisions() -> list[float]:
        return [r.nouls["relevant"].noul for r in decisions.batch(requests)]

    systems = {"reranker": via_reranker, "decision_model": via_decisions}
    scores = {name: fn() for name, fn in systems.items()}  # warm-up, and the scores
    print("warm-up done", file=sys.stderr, flush=True)
    diff = max(abs(a - b) for a, b in zip(scores["reranker"], scores["decision_model"],
                                          strict=True))
    rates: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.rounds):
        for name, fn in systems.items():
            start = time.perf_counter()
            fn()
            rates[name].append(len(pairs) / (time.perf_counter() - start))
            print(f"{name}: {rates[name][-1]:.2f} pairs/s", file=sys.stderr, flush=True)
    ratios = [d / r for d, r in zip(rates["decision_model"], rates["reranker"], strict=True)]
    result = {
        "pairs": len(pairs), "rounds": args.rounds, "batch": args.batch,
        "max_abs_score_diff": diff,
        "pairs_per_s": {k: [round(x, 2) for x in v] for k, v in rates.items()},
        "median_pairs_per_s": {k: round(statistics.median(v), 2) for k, v in rates.items()},
        "ratio_decision_over_reranker": [round(x, 3) for x in ratios],
        "median_ratio": round(statistics.median(ratios), 3),
        "machine": f"{platform.processor() or platform.machine()}, "
                   f"{torch.get_num_threads()} torch threads",
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
