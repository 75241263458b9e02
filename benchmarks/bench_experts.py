"""Before/after benchmark of the shipped experts on the held-out HotpotQA test set.

Same base (SmolLM2-135M-Instruct), same prompts and passages, one run:

- relevance: balanced (question, passage) pairs from HotpotQA test (gold paragraphs vs the
  item's own distractors). Accuracy (P(yes) > 0.5) and ROC AUC for the prompted base, the base
  + `relevance` expert, and the all-MiniLM-L6-v2 cosine score (a non-LLM baseline; AUC only).
- grounded-qa: RAFT-style prompts (``expertrag.rag.build_messages``) with the oracle passages
  + distractors, and without the oracle. Exact match, token F1, answer-contained, refusal
  accuracy (oracle absent) and false-refusal rate (oracle present), base vs base + expert.
- decode speed with and without an expert: the same batch of prompts that run to the token
  limit (counting, listing), so every side decodes the same number of tokens.

    python benchmarks/bench_experts.py --data-dir ../shared/data [--limit 200] [--part relevance]
    python benchmarks/bench_experts.py --part speed      # no shared data needed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]


def load_test(data_dir: Path, limit: int | None) -> list[dict[str, Any]]:
    """HotpotQA test.jsonl: evaluation only (the training loaders refuse this file)."""
    path = data_dir / "hotpotqa" / "test.jsonl"
    if not path.is_file():
        sys.exit(f"error: {path} not found: pass --data-dir pointing at the shared data folder")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit else rows


def relevance_part(llm: Any, items: list[dict[str, Any]], batch_size: int) -> list[list[str]]:
    from expertrag.embeddings import Embedder
    from expertrag.training.data import build_relevance
    from expertrag.training.trainer import roc_auc

    pairs = build_relevance(items, seed=0)
    truth = [r["meta"]["label"] for r in pairs]
    convs = [r["messages"] for r in pairs]
    table = []
    for label, expert in (("base, prompted", None), ("base + relevance expert", "relevance")):
        started = time.perf_counter()
        probs = llm.label_probabilities(convs, labels=("yes", "no"), expert=expert,
                                        batch_size=batch_size)
        took = time.perf_counter() - started
        scores = [p["yes"] for p in probs]
        acc = sum((s > 0.5) == bool(y) for s, y in zip(scores, truth, strict=True)) / len(truth)
        table.append([label, f"{acc:.3f}", f"{roc_auc(scores, truth):.3f}",
                      f"{len(convs) / took:.1f}"])
    # the non-LLM baseline: cosine(question, passage) with all-MiniLM-L6-v2
    embedder = Embedder()
    texts = [_user_parts(c) for c in convs]
    q_vecs = embedder.embed_documents([q for q, _ in texts])
    p_vecs = embedder.embed_documents([p for _, p in texts])
    cos = [sum(a * b for a, b in zip(q, p, strict=True)) for q, p in zip(q_vecs, p_vecs,
                                                                            strict=True)]
    table.append(["all-MiniLM-L6-v2 cosine", "-", f"{roc_auc(cos, truth):.3f}", "-"])
    print(f"\nrelevance grading: {len(pairs)} balanced pairs from {len(items)} HotpotQA test items")
    _print(["scorer", "accuracy", "ROC AUC", "pairs/s"], table)
    return table


def _user_parts(conv: list[dict[str, str]]) -> tuple[str, str]:
    """(question, passage) back out of a relevance prompt (``relevance_messages``), for the
    embedding baseline."""
    text = conv[-1]["content"]
    passage, _, rest = text.removeprefix("Passage:\n").partition("\n\nQuestion: ")
    return rest.split("\n", 1)[0].strip(), passage.strip()


def grounded_part(llm: Any, items: list[dict[str, Any]], batch_size: int,
                  max_new_tokens: int) -> list[list[str]]:
    from expertrag.training.data import build_raft
    from expertrag.training.trainer import answer_metrics

    rows = build_raft(items, distractors_k=2, p_no_oracle=0.5, seed=0)
    table = []
    for label, expert in (("base, prompted", None), ("base + grounded-qa expert", "grounded-qa")):
        preds: list[str] = []
        tokens, started = 0, time.perf_counter()
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            out = llm.generate([r["messages"] for r in chunk], expert=expert,
                               max_new_tokens=max_new_tokens)
            preds += [o.text for o in out]
            tokens += sum(o.completion_tokens for o in out)
        took = time.perf_counter() - started
        m = answer_metrics(preds, rows)
        table.append([label, *(f"{m[k]:.3f}" for k in ("exact_match", "f1", "answer_contained",
                                                       "refusal_accuracy",
                                                       "false_refusal_rate")),
                      f"{tokens / took:.1f}"])
    n_oracle = sum(r["meta"]["has_oracle"] for r in rows)
    print(f"\ngrounded QA: {len(rows)} HotpotQA test items ({n_oracle} with the oracle passages,"
          f" {len(rows) - n_oracle} without)")
    _print(["model", "EM", "F1", "contained", "refusal acc", "false refusal", "tok/s"], table)
    return table


#: Prompts whose answers run to any token limit, so base and expert decode equal lengths.
SPEED_PROMPTS = [
    "Count from 1 to 200, separated by commas.",
    "List the numbers from 500 to 700, one per line.",
    "Write the alphabet from A to Z, then again in lower case, then again in upper case.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how a steam engine works, step by step.",
    "Count backwards from 300 to 1, separated by spaces.",
    "Describe every planet of the solar system in detail.",
    "Write a long poem about the sea.",
]


def speed_part(llm: Any, experts: list[str], new_tokens: int, reps: int = 3) -> list[list[str]]:
    """Decode tok/s of one batch of 8 with the bare base and with each expert (same prompts)."""
    convs = [[{"role": "user", "content": p}] for p in SPEED_PROMPTS]
    sides = [("base", None), *((f"base + {e}", e) for e in experts)]
    llm.generate(convs[:2], max_new_tokens=4)  # warm-up
    times: dict[str, list[float]] = {label: [] for label, _ in sides}
    tokens: dict[str, int] = {}
    for _ in range(reps):  # interleaved, so drifting machine load hits every side alike
        for label, expert in sides:
            started = time.perf_counter()
            out = llm.generate(convs, expert=expert, max_new_tokens=new_tokens)
            times[label].append(time.perf_counter() - started)
            tokens[label] = sum(o.completion_tokens for o in out)
    base_tps = tokens["base"] / min(times["base"])
    table = []
    for label, _ in sides:
        tps = tokens[label] / min(times[label])
        # an expert that stops early (relevance says one word) decodes mostly prefill: no ratio
        same = tokens[label] >= 0.9 * tokens["base"]
        table.append([label, str(tokens[label]), f"{tps:.1f}",
                      f"{tps / base_tps:.2f}x" if same else "n/a (stopped early)"])
    print(f"\ndecode speed: batch of {len(convs)}, up to {new_tokens} new tokens each, "
          f"best of {reps}")
    _print(["model", "tokens", "tok/s", "vs base"], table)
    return table


def _print(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--experts-dir", type=Path,
                        default=ROOT / "src" / "expertrag" / "data" / "experts")
    parser.add_argument("--limit", type=int, default=None, help="first N test items")
    parser.add_argument("--part", choices=["relevance", "grounded", "speed", "all"],
                        default="all")
    parser.add_argument("--speed-tokens", type=int, default=64,
                        help="new tokens per prompt in the decode-speed part")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()

    from expertrag import ExpertLLM

    items = load_test(args.data_dir, args.limit) if args.part != "speed" else []
    llm = ExpertLLM().load()
    wanted = {"relevance": ["relevance"], "grounded": ["grounded-qa"],
              "speed": ["relevance", "grounded-qa"],
              "all": ["relevance", "grounded-qa"]}[args.part]
    for name in wanted:
        folder = args.experts_dir / name
        if not (folder / "adapter_config.json").is_file():
            sys.exit(f"error: expert {name!r} not found in {folder}: train it first "
                     f"(expertrag train --recipe {name} --output {folder})")
        llm.add_expert(name, folder)
        meta = json.loads((folder / "expertrag_expert.json").read_text(encoding="utf-8"))
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) / 1e6
        train_s = meta.get("training", {}).get("seconds")
        print(f"expert {name}: {size:.1f} MB on disk, training time "
              f"{train_s if train_s is None else f'{train_s / 60:.1f} min'}")
    out: dict[str, Any] = {}
    if args.part in ("relevance", "all"):
        out["relevance"] = relevance_part(llm, items, args.batch_size)
    if args.part in ("grounded", "all"):
        out["grounded"] = grounded_part(llm, items, args.batch_size, args.max_new_tokens)
    if args.part in ("speed", "all"):
        out["speed"] = speed_part(llm, wanted, args.speed_tokens)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
