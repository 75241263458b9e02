"""In-process ExpertLLM vs the same model and experts behind a vLLM server, one run.

Start the server first (its own venv; the shipped experts become LoRA models):

    bash scripts/setup_vllm.sh && bash scripts/serve_vllm.sh &      # http://127.0.0.1:8000
    python benchmarks/bench_serving.py --server http://127.0.0.1:8000

Same prompts both ways (decoding to the token limit so every side produces the same number of
tokens): tokens/s at 1, 8 and 32 concurrent requests with the bare base (what LoRA costs each
side), with one expert and with the experts mixed; first-token latency p50/p95 of single
requests (streamed); a CRAG answer's seconds per question both ways. In-process, concurrent
requests are one batched ``generate``; on the server they are concurrent HTTP requests,
batched by vLLM's scheduler.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path
from typing import Any

from _common import CRAG_QUESTIONS, SPEED_PROMPTS, crag_chain
from _common import print_table as _print

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def throughput(llm: Any, n: int, experts: list[str | None], tokens: int) -> float:
    convs = [[{"role": "user", "content": SPEED_PROMPTS[i % len(SPEED_PROMPTS)]}]
             for i in range(n)]
    rows = [experts[i % len(experts)] for i in range(n)]
    started = time.perf_counter()
    out = llm.generate(convs, expert=rows, max_new_tokens=tokens, refusal_gate=False)
    took = time.perf_counter() - started
    return sum(r.completion_tokens for r in out) / took


def first_token(llm: Any, expert: str | None, reps: int) -> tuple[float, float]:
    times = []
    for i in range(reps):
        conv = [{"role": "user", "content": SPEED_PROMPTS[i % len(SPEED_PROMPTS)]}]
        started = time.perf_counter()
        for chunk in llm.stream(conv, expert=expert, max_new_tokens=8, refusal_gate=False):
            if chunk.text:
                times.append(time.perf_counter() - started)
                break
    times.sort()
    return statistics.median(times), times[int(0.95 * (len(times) - 1))]


def crag_seconds(llm: Any, n: int) -> float:
    chain = crag_chain(llm)
    questions = CRAG_QUESTIONS * (n // 4 + 1)
    started = time.perf_counter()
    chain.answer_many(questions[:n])
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("EXPERTRAG_SERVER_URL",
                                                           "http://127.0.0.1:8000"))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--latency-reps", type=int, default=10)
    parser.add_argument("--crag-questions", type=int, default=8)
    args = parser.parse_args()

    from expertrag import ExpertLLM
    from expertrag.experts import attach_shipped
    from expertrag.models.server import ServerLLM

    local = ExpertLLM().load()
    experts = attach_shipped(local)
    server = ServerLLM(args.server, concurrency=32)
    missing = [e for e in experts if e not in server.experts]
    if missing:
        raise SystemExit(f"error: the server at {args.server} does not serve {missing}")
    base, one = [None], ["grounded-qa"]
    mixed = [*experts, None]
    levels = [int(c) for c in args.concurrency.split(",")]
    rows, figures = [], {}
    for side, llm in (("in-process", local), ("vLLM server", server)):
        throughput(llm, 2, one, 4)  # warm-up
        for label, which in (("bare base", base), ("one expert", one), ("experts mixed", mixed)):
            for n in levels:
                tps = throughput(llm, n, which, args.tokens)
                figures[(side, label, n)] = tps
        p50, p95 = first_token(llm, "grounded-qa", args.latency_reps)
        figures[(side, "latency")] = (p50, p95)
        figures[(side, "crag")] = crag_seconds(llm, args.crag_questions)
    for label in ("bare base", "one expert", "experts mixed"):
        for n in levels:
            a, b = figures[("in-process", label, n)], figures[("vLLM server", label, n)]
            rows.append([label, str(n), f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}x"])
    print(f"\ntokens/s, {args.tokens} new tokens per request")
    _print(["experts", "concurrent", "in-process tok/s", "server tok/s", "server / in-process"],
           rows)
    print("\nfirst-token latency (streamed, grounded-qa) and CRAG seconds per question")
    _print(["side", "p50 s", "p95 s", "CRAG s / question"],
           [[s, f"{figures[(s, 'latency')][0]:.3f}", f"{figures[(s, 'latency')][1]:.3f}",
             f"{figures[(s, 'crag')]:.2f}"] for s in ("in-process", "vLLM server")])


if __name__ == "__main__":
    main()
