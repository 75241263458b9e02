"""Mixed experts on the merged llama.cpp layout: one server at a time, or several at once?

The merged layout (``LlamaCppLLM.start(layout="merged")``) runs one llama-server per expert
and lets one of them decode at a time (``Turnstile``), so 8 requests over 4 experts decode as
4 batches of 2. This probe measures the alternatives on the same servers and the same load
(three experts and the base, as in ``bench_backends.py``, with its long prompts and its
``BareServer`` requests: 8 requests, 2 per server, up to 64 new tokens each, greedy), median
of ``--reps`` rounds:

- ``threads`` per server and ``lanes`` (servers decoding at once; 1 is the turnstile), with
  llama.cpp's default thread polling or ``--poll 0``;
- beside each, that configuration's base server alone with 8 concurrent requests, and the
  same base server sent the mixed load's shape: 4 turns of 2 requests, one after another.
  Mixed against that column is what switching servers costs; that column against the base
  with 8 at once is what batches of 2 instead of 8 cost.

``--short`` sends bench_backends' short prompts (what its mixed row sends) instead of its
long ones; ``--configs 2x1,1x4`` measures only those threads x servers-at-once pairs.

    python benchmarks/probe_merged_lanes.py [--short] [--configs 2x1]
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


def load(peers: list[Any], per: int, tokens: int, long: bool = True) -> int:
    """``per`` fresh prompts to each of ``peers`` (bench_backends' ``BareServer``), all at
    once; tokens generated."""
    jobs = [(peer, conv) for peer in peers for conv in fresh_convs(per, long=long)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return sum(pool.map(lambda job: job[0].complete(job[1], tokens), jobs))


def measure(paths: list[str], threads: int, lanes: int, poll: str, reps: int,
            tokens: int, tokenizer: Any, long: bool = True) -> dict[str, float]:
    """Mixed tok/s, the base server's 8-concurrent tok/s and the base server's tok/s for
    the mixed load's turns, for one configuration."""
    from expertrag.models.chat import render_prompt
    from expertrag.models.llamacpp import LlamaCppServer

    extra = ["--poll", poll] if poll else []
    servers = [LlamaCppServer(p, [], parallel=8, ctx_per_slot=2048, threads=threads,
                              extra_args=extra).start() for p in paths]
    peers = [BareServer(s.url, tokenizer, lambda conv: render_prompt(tokenizer, conv))
             for s in servers]

    def rate(groups: list[list[Any]], per: int) -> float:
        started = time.perf_counter()
        done = sum(load(group, per, tokens, long) for group in groups)
        return done / (time.perf_counter() - started)

    try:
        load(peers[:1], 2, tokens)  # warm up
        return median_rounds(reps, {
            "mixed": lambda: rate([peers[i:i + lanes] for i in range(0, len(peers), lanes)], 2),
            "base": lambda: rate([peers[:1]], 8),
            "base turns": lambda: rate([peers[:1]] * len(peers), 2)})
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--short", action="store_true", help="bench_backends' short prompts")
    parser.add_argument("--configs", default="",
                        help="threads x servers at once, comma-separated (default: all)")
    args = parser.parse_args()
    wanted = {tuple(int(x) for x in c.split("x")) for c in args.configs.split(",") if c}
    configs = [c for c in CONFIGS if not wanted or (c[0], c[1]) in wanted]
    from transformers import AutoTokenizer

    from expertrag.models import llamacpp as lc

    gguf, config_dir = lc._base_files("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(config_dir)
    folders = lc._expert_folders(list(EXPERTS))
    paths = [gguf] + [str(lc.merge_adapter(gguf, lc.convert_adapter(f, config_dir, name=n),
                                           "q8_0")) for n, f in folders.items()]
    print(f"{time.strftime('%Y-%m-%d %H:%M')}; {len(paths)} servers (base + "
          f"{', '.join(folders)} merged at q8_0), {os.cpu_count()} cores, {args.reps} rounds, "
          f"{args.tokens} new tokens, {'short' if args.short else 'long'} prompts")
    print("| threads / server | servers at once | poll | mixed tok/s | base alone, 8 "
          "concurrent | base alone, 4 turns of 2 | mixed / base alone (first row's) |")
    print("|---|---|---|---|---|---|---|")
    reference = None
    for threads, lanes, poll in configs:
        got = measure(paths, threads, lanes, poll, args.reps, args.tokens, tokenizer,
                      long=not args.short)
        mixed, bare = got["mixed"], got["base"]
        if reference is None:
            reference = bare
        print(f"| {threads} | {lanes} | {poll or 'default'} | {mixed:.1f} | {bare:.1f} | "
              f"{got['base turns']:.1f} | {mixed / reference:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
