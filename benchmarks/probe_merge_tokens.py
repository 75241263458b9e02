"""MultiHopRAG's seconds at several ``merge_tokens`` thresholds, in one process, on the same
questions: in batches of 8 (what bench_multihop.py runs) and one question at a time (what an
interactive user runs, where most calls are small). Rounds alternate the thresholds, so a
drift of the host's speed hits each of them alike.

    python benchmarks/probe_merge_tokens.py --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from _common import table

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--thresholds", default="2048,512,none")
    parser.add_argument("--questions", type=int, default=16, help="for the batches of 8")
    parser.add_argument("--single", type=int, default=4, help="asked one at a time")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    from bench_multihop import draw

    from expertrag.chains.multihop import MultiHopRAG
    from expertrag.evaluation.answer_sets import load_answer_set
    from expertrag.experts import attach_shipped
    from expertrag.models.llm import ExpertLLM

    levels = [None if t.lower() == "none" else int(t) for t in args.thresholds.split(",")]
    llm = ExpertLLM().load()
    attach_shipped(llm)
    aset = load_answer_set("hotpotqa-open", "test", args.data_dir, k=5, check=False)
    draw(aset, 60, "hotpotqa-open-test")  # bench_multihop's test sample, in its order
    questions = [c.question for c in aset.cases[:args.questions]]
    chain = MultiHopRAG(llm, aset.retriever)
    chain.answer_many(questions[:2])  # warm up
    runs: dict[int | None, list[tuple[float, float]]] = {t: [] for t in levels}
    answers: dict[int | None, list[str]] = {}
    for round_ in range(args.rounds):
        for level in levels:
            llm.merge_tokens = level
            started = time.perf_counter()
            got = []
            for i in range(0, len(questions), 8):
                got += chain.answer_many(questions[i:i + 8])
            batched = (time.perf_counter() - started) / len(questions)
            started = time.perf_counter()
            for q in questions[:args.single]:
                chain.answer(q)
            single = (time.perf_counter() - started) / args.single
            runs[level].append((batched, single))
            answers.setdefault(level, [r.answer.strip() for r in got])
            print(f"round {round_ + 1}, merge_tokens {level}: {batched:.2f} s/q in batches of 8, "
                  f"{single:.2f} s/q one at a time", flush=True)
    first = answers[levels[0]]
    rows = [[str(level), " / ".join(f"{b:.2f}" for b, _ in runs[level]),
             " / ".join(f"{s:.2f}" for _, s in runs[level]),
             f"{sum(a == b for a, b in zip(answers[level], first, strict=True))} of {len(first)}"]
            for level in levels]
    print()
    print(table(["merge_tokens", "s / q, batches of 8 (each round)",
                 "s / q, one at a time (each round)",
                 f"answers identical to merge_tokens {levels[0]}"], rows))


if __name__ == "__main__":
    main()
