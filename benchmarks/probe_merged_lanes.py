"""Mixed experts on the merged llama.cpp layout: one server at a time, or several at once?

The merged layout (``LlamaCppLLM.start(layout="merged")``) runs one llama-server per expert
and lets one of them decode at a time (``Turnstile``), so 8 requests over 4 experts decode as
4 batches of 2. This probe measures the alternatives on the same servers and the same load
(three experts and the base, as in ``bench_backends.py``: 8 requests, 2 per server, 64 new
tokens each, greedy), median of ``--reps`` rounds:

- ``threads`` per server and ``lanes`` (servers decoding at once; 1 is the turnstile), with
  llama.cpp's default thread polling or ``--poll 0``;
- beside each, that configuration's base server alone with 8 concurrent requests.

    python benchmarks/probe_merged_lanes.py
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
PROMPT = ("<|im_start|>user\nWrite a long story about a cat who travels the world.<|im_end|>\n"
          "<|im_start|>assistant\n")
CONFIGS = ((2, 1, ""), (2, 2, ""), (2, 2, "0"), (1, 2, ""), (1, 4, ""), (1, 4, "0"))
#: the mixed load of bench_backends.py: three experts and the base
EXPERTS = ("grounded-qa", "critic", "relevance")


def request(url: str, tokens: int) -> int:
    import httpx

    r = httpx.post(url + "/completion", timeout=600, json={
        "prompt": PROMPT, "n_predict": tokens, "ignore_eos": True, "temperature": 0,
        "cache_prompt": False})
    r.raise_for_status()
    return int(r.json()["timings"]["predicted_n"])


def load(urls: list[str], per: int, tokens: int) -> int:
    """``per`` requests to each of ``urls``, all at once; tokens generated."""
    with cf.ThreadPoolExecutor(len(urls) * per) as pool:
        return sum(pool.map(lambda u: request(u, tokens), [u for u in urls for _ in range(per)]))


def measure(paths: list[str], threads: int, lanes: int, poll: str, reps: int,
            tokens: int) -> tuple[float, float]:
    """(mixed tok/s, the base server's 8-concurrent tok/s) for one configuration."""
    from expertrag.models.llamacpp import LlamaCppServer

    extra = ["--poll", poll] if poll else []
    servers = [LlamaCppServer(p, [], parallel=8, ctx_per_slot=2048, threads=threads,
                              extra_args=extra).start() for p in paths]
    urls = [s.url for s in servers]
    try:
        load(urls[:1], 2, tokens)  # warm up
        mixed, bare = [], []
        for _ in range(reps):
            started, n = time.perf_counter(), 0
            for i in range(0, len(urls), lanes):
                n += load(urls[i:i + lanes], 2, tokens)
            mixed.append(n / (time.perf_counter() - started))
        for _ in range(reps):
            started = time.perf_counter()
            n = load(urls[:1], 8, tokens)
            bare.append(n / (time.perf_counter() - started))
        return statistics.median(mixed), statistics.median(bare)
    finally:
        for s in servers:
            s.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    from expertrag.models import llamacpp as lc

    gguf, config_dir = lc._base_files("smollm2-135m-instruct")
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
        mixed, bare = measure(paths, threads, lanes, poll, args.reps, args.tokens)
        if reference is None:
            reference = bare
        print(f"| {threads} | {lanes} | {poll or 'default'} | {mixed:.1f} | {bare:.1f} | "
              f"{mixed / reference:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
