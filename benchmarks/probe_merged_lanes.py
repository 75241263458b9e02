"""Mixed experts on the merged llama.cpp layout: one server at a time, or several at once?

The merged layout (``LlamaCppLLM.start(layout="merged")``) runs one llama-server per expert
and lets one of them decode at a time (``Turnstile``), so 8 requests over 4 experts decode as
4 batches of 2. This probe measures the alternatives on the same servers and the same load
(three experts and the base, as in ``bench_backends.py``, with its long prompts and its
``BareServer`` requests: 8 requests, 2 per server, up to 64 new tokens each, greedy), median
of ``--reps`` rounds:

- ``threads`` per server and ``lanes`` (servers decoding at once; 1 is the turnstile), with
  llama.cpp's default thread polling or ``--poll 0``;
- beside each, that configuration's base server alone with 8 concurrent requests.

    python benchmarks/probe_merged_lanes.py
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench_backends import BareServer, fresh_convs, median_rounds

os.environ.setdefault("HF_HUB_OFFLINE", "1")
CONFIGS = ((2, 1, ""), (2, 2, ""), (2, 2, "0"), (1, 2, ""), (1, 4, ""), (1, 4, "0"))
#: the mixed load of bench_backends.py: three experts and the base
EXPERTS = ("grounded-qa", "critic", "relevance")


def load(peers: list[Any], per: int, tokens: int) -> int:
    """``per`` fresh prompts to each of ``peers`` (bench_backends' ``BareServer``), all at
    once; tokens generated."""
    jobs = [(peer, conv) for peer in peers for conv in fresh_convs(per, long=True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return sum(pool.map(lambda job: job[0].complete(job[1], tokens), jobs))


def measure(paths: list[str], threads: int, lanes: int, poll: str, reps: int,
            tokens: int, tokenizer: Any) -> dict[str, float]:
    """Mixed tok/s and the base server's 8-concurrent tok/s for one configuration."""
    from expertrag.models.chat import render_prompt
    from expertrag.models.llamacpp import LlamaCppServer

    extra = ["--poll", poll] if poll else []
    servers = [LlamaCppServer(p, [], parallel=8, ctx_per_slot=2048, threads=threads,
                              extra_args=extra).start() for p in paths]
    peers = [BareServer(s.url, tokenizer, lambda conv: render_prompt(tokenizer, conv))
             for s in servers]

    def rate(groups: list[list[Any]], per: int) -> float:
        started = time.perf_counter()
        done = sum(load(group, per, tokens) for group in groups)
        return done / (time.perf_counter() - started)

    try:
        load(peers[:1], 2, tokens)  # warm up
        return median_rounds(reps, {
            "mixed": lambda: rate([peers[i:i + lanes] for i in range(0, len(peers), lanes)], 2),
            "base": lambda: rate([peers[:1]], 8)})
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from expertrag.models import llamacpp as lc

    gguf, config_dir = lc._base_files("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(config_dir)
    folders = lc._expert_folders(list(EXPERTS))
    paths = [gguf] + [str(lc.merge_adapter(gguf, lc.convert_adapter(f, config_dir, name=n),
                                           "q8_0")) for n, f in folders.items()]
    print(f"{len(paths)} servers (base + {', '.join(folders)} merged at q8_0), "
          f"{os.cpu_count()} cores, {args.reps} rounds, {args.tokens} new tokens")
    print("| threads / server | servers at once | poll | mixed tok/s | base alone, 8 "
          "concurrent | mixed / base alone (2 threads, default poll) |")
    print("|---|---|---|---|---|---|")
    reference = None
    for threads, lanes, poll in CONFIGS:
        got = measure(paths, threads, lanes, poll, args.reps, args.tokens, tokenizer)
        mixed, bare = got["mixed"], got["base"]
        if reference is None:
            reference = bare
        print(f"| {threads} | {lanes} | {poll or 'default'} | {mixed:.1f} | {bare:.1f} | "
              f"{mixed / reference:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
