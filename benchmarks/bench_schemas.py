"""Structured output on the schema battery (tests/schema_battery.py), real embedded model.

For each class of JSON Schema keyword: how many schemas gave a valid result, how many were
refused up front (UnsupportedSchemaError, before any token), how many failed (must be 0),
and the per-token cost of decoding under the grammar: ms per generated token with the
grammar vs the same prompt generated freely (same max_new_tokens; grammars are compiled
before timing, compile time is reported apart).

    python benchmarks/bench_schemas.py                 # SmolLM2-135M, greedy, 32 tokens
    python benchmarks/bench_schemas.py --max-new-tokens 32 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from schema_battery import CASES, evaluate, prompt_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--json", help="also write per-case results to this file")
    args = parser.parse_args()

    from expertrag import ExpertLLM
    from expertrag.errors import UnsupportedSchemaError

    llm = ExpertLLM(args.model).load()
    n = args.max_new_tokens
    rows = []
    for case in CASES:
        compile_s = 0.0
        if not case.refused:
            t0 = time.perf_counter()
            try:
                llm.grammars.json_schema(case.schema)
            except UnsupportedSchemaError:
                pass
            compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        outcome, res = evaluate(llm, case, max_new_tokens=n)
        grammar_s = time.perf_counter() - t0
        row = {"name": case.name, "group": case.group, "outcome": outcome,
               "compile_ms": 1000 * compile_s}
        if outcome == "valid":
            t1 = time.perf_counter()
            free = llm.generate(prompt_for(case), max_new_tokens=res.completion_tokens,
                                refusal_gate=False)
            free_s = time.perf_counter() - t1
            row.update(tokens=res.completion_tokens,
                       grammar_ms_per_token=1000 * grammar_s / max(res.completion_tokens, 1),
                       free_ms_per_token=1000 * free_s / max(free.completion_tokens, 1))
        rows.append(row)
        print(f"  {case.group:12s} {case.name:30s} {outcome[:90]}", flush=True)

    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["group"]].append(row)
    print()
    print(f"model {args.model}, greedy, max_new_tokens {n}, {len(rows)} schemas")
    header = (f"{'class':12s} {'n':>3s} {'valid':>6s} {'refused':>8s} {'failed':>7s} "
              f"{'ms/tok grammar':>15s} {'ms/tok free':>12s} {'overhead':>9s} "
              f"{'compile ms':>11s}")
    print(header)
    print("-" * len(header))
    total = defaultdict(int)
    all_timed = []
    for group in sorted(groups, key=lambda g: (g == "refused", g)):
        items = groups[group]
        valid = sum(r["outcome"] == "valid" for r in items)
        refused = sum(r["outcome"] == "refused" for r in items)
        failed = len(items) - valid - refused
        total["n"] += len(items)
        total["valid"] += valid
        total["refused"] += refused
        total["failed"] += failed
        timed = [r for r in items if "grammar_ms_per_token" in r]
        all_timed += timed
        compiled = [r["compile_ms"] for r in items if r["compile_ms"]]
        print(f"{group:12s} {len(items):3d} {valid / len(items):6.0%} "
              f"{refused / len(items):8.0%} {failed:7d} " + _cost(timed) +
              f" {(sum(compiled) / len(compiled)) if compiled else 0:11.1f}")
    print("-" * len(header))
    print(f"{'all':12s} {total['n']:3d} {total['valid'] / total['n']:6.0%} "
          f"{total['refused'] / total['n']:8.0%} {total['failed']:7d} " + _cost(all_timed))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    llm.close()
    return 0 if total["failed"] == 0 else 1


def _cost(timed: list[dict]) -> str:
    if not timed:
        return f"{'-':>15s} {'-':>12s} {'-':>9s}"
    tokens = sum(r["tokens"] for r in timed)
    g = sum(r["grammar_ms_per_token"] * r["tokens"] for r in timed) / tokens
    f = sum(r["free_ms_per_token"] * r["tokens"] for r in timed) / tokens
    return f"{g:15.1f} {f:12.1f} {g / f - 1:+9.0%}"


if __name__ == "__main__":
    raise SystemExit(main())
