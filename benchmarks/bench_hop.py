"""The ``hop`` expert on held-out HotpotQA against the bare base prompted the same way.

Rows come from HotpotQA test (never trained on) with the training builder
(:func:`expertrag.training.hop_data.hop_item_rows`): the answer benchmark's split rule makes
items 300-499 the calibration part (thresholds are chosen there) and the rest the test part
(reported). Per model (``hop`` expert, bare base, same prompts, same rows):

- keep: ROC AUC of P(yes) over the keep rows (gold hop paragraphs vs distractors, each read
  with its hop's query), accuracy at the calibrated threshold;
- stop: accuracy at the threshold of best balanced accuracy on calibration (and at 0.5);
- next-query hit: the generated query (grammar-constrained, one JSON string), given the first
  hop's paragraph, retrieves the second gold paragraph in the top 5 of the hybrid retriever
  over every HotpotQA test paragraph pooled (the open setting's corpus). Beside it, the same
  hit for the generated query followed by the question (what MultiHopRAG searches with
  ``search_with_question``), for the question itself as the query (what one retrieval step
  finds) and for the gold title (the bound).

``--candidate PATH`` adds a second hop adapter (a retrained one) on the same rows, and every
model's figures on the calibration part beside the test part's, so that the choice between
them is made on calibration rows.

``--unmerged`` adds the hop expert served without merging (``llm.merge_tokens = None``, as
peft serves it) on the same rows, with each model's seconds: what merging large calls
changes in quality and speed.

    python benchmarks/bench_hop.py --data-dir ../shared/data [--expert PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import table

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"next_hit": 0.6, "stop_accuracy": 0.8, "keep_auc": 0.85}


def load_rows(data_dir: Path) -> tuple[dict[str, list[dict[str, Any]]], list[Any]]:
    """The hop rows of each split and the open pool of every test paragraph."""
    from expertrag.datasets import HOTPOT_TEST, load_hotpot_test
    from expertrag.evaluation.answer_sets import HOTPOT_CALIBRATION
    from expertrag.evaluation.datasets import hotpot_items
    from expertrag.training.hop_data import hop_item_rows

    items = load_hotpot_test(data_dir / HOTPOT_TEST)
    rows: dict[str, list[dict[str, Any]]] = {"calibration": [], "test": []}
    for i in range(len(items)):
        split = "calibration" if i in HOTPOT_CALIBRATION else "test"
        rows[split].extend(hop_item_rows(items, i, seed=7, source="hotpotqa-test"))
    pool = list({(d.metadata["title"], d.text.strip()): d for it in hotpot_items(items)
                 for d in it.gold + it.distractors}.values())
    return rows, pool


def label_scores(llm: Any, rows: list[dict[str, Any]], expert: str | None,
                 batch: int) -> list[float]:
    from tqdm import tqdm

    from expertrag.experts.hop import LABELS

    out: list[float] = []
    for s in tqdm(range(0, len(rows), batch), desc=f"labels / {expert or 'base'}",
                  unit="batch"):
        probs = llm.label_probabilities([r["messages"] for r in rows[s:s + batch]],
                                        labels=LABELS, expert=expert)
        out += [float(p[LABELS[0]]) for p in probs]
    return out


def next_queries(llm: Any, rows: list[dict[str, Any]], expert: str | None,
                 batch: int) -> list[str]:
    from tqdm import tqdm

    from expertrag.errors import InputError
    from expertrag.experts.hop import NEXT_QUERY_SCHEMA, parse_query

    out: list[str] = []
    for s in tqdm(range(0, len(rows), batch), desc=f"next / {expert or 'base'}", unit="batch"):
        results = llm.generate([r["messages"] for r in rows[s:s + batch]], expert=expert,
                               max_new_tokens=32, temperature=0.0,
                               json_schema=NEXT_QUERY_SCHEMA)
        for r in results:
            try:
                out.append(parse_query(r.parsed if isinstance(r.parsed, str) else r.text))
            except InputError:
                out.append("")
    return out


def best_threshold(scores: list[float], labels: list[int]) -> float:
    """The threshold of best balanced accuracy (ties: the one nearest 0.5)."""
    def balanced(t: float) -> float:
        pos = [s >= t for s, y in zip(scores, labels, strict=True) if y]
        neg = [s < t for s, y in zip(scores, labels, strict=True) if not y]
        return (sum(pos) / max(1, len(pos)) + sum(neg) / max(1, len(neg))) / 2
    candidates = [*sorted(set(scores)), 0.5]
    return max(candidates, key=lambda t: (round(balanced(t), 6), -abs(t - 0.5)))


def accuracy(scores: list[float], labels: list[int], t: float) -> float:
    return sum((s >= t) == bool(y) for s, y in zip(scores, labels, strict=True)) / len(labels)


def hits(retriever: Any, queries: list[str], targets: list[str], k: int = 5) -> list[bool]:
    """Whether each query retrieves its target paragraph (by text) in the top ``k``."""
    out = []
    for q, target in zip(queries, targets, strict=True):
        found = retriever.retrieve(q, k) if q.strip() else []
        out.append(any(d.text.strip() == target for d in found))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--expert", default=None,
                        help="the hop adapter to measure (default: the shipped one)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None,
                        help="at most this many rows of each kind per split (a quick look)")
    parser.add_argument("--json", default=None, help="write every figure here")
    parser.add_argument("--unmerged", action="store_true",
                        help="also the hop expert never merged into the weights "
                             "(merge_tokens=None), on the same rows")
    parser.add_argument("--no-base", action="store_true", help="skip the bare base's rows")
    parser.add_argument("--candidate", default=None,
                        help="a second hop adapter to measure on the same rows (with "
                             "calibration-part figures for the choice)")
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir)
    if not (data_dir / "hotpotqa" / "test.jsonl").is_file():
        sys.exit(f"error: {data_dir}/hotpotqa/test.jsonl not found (pass --data-dir)")
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.experts import shipped_experts
    from expertrag.models import ExpertLLM
    from expertrag.retrieval.hybrid import HybridRetriever
    from expertrag.training.trainer import roc_auc

    folder = args.expert or shipped_experts().get("hop")
    if folder is None:
        sys.exit("error: no hop expert shipped; pass --expert PATH")
    rows, pool = load_rows(data_dir)
    by = {split: {kind: [r for r in rs if r["meta"]["kind"] == kind][:args.limit]
                  for kind in ("keep", "stop", "next")} for split, rs in rows.items()}
    llm = ExpertLLM.from_pretrained()
    llm.add_expert("hop", str(folder))
    default = llm.merge_tokens
    # (row name, expert, merge_tokens): one loaded model serves every row
    models: list[tuple[str, str | None, int | None]] = [("hop expert", "hop", default)]
    if args.candidate:
        llm.add_expert("hop-candidate", args.candidate)
        models.append(("hop candidate", "hop-candidate", default))
    if args.unmerged:
        models.append(("hop expert, never merged", "hop", None))
    if not args.no_base:
        models.append(("bare base, same prompts", None, default))
    retriever = HybridRetriever(pool, embedder=MemoEmbedder(Embedder()))
    started = time.perf_counter()
    results: dict[str, dict[str, Any]] = {}
    test_next, cal_next = by["test"]["next"], by["calibration"]["next"]
    targets = [r["meta"]["second_text"].strip() for r in test_next]
    cal_targets = [r["meta"]["second_text"].strip() for r in cal_next]
    baseline = {
        "question as query": hits(retriever, [r["meta"]["question"] for r in test_next],
                                  targets),
        "gold title (bound)": hits(retriever, [json.loads(r["answer"]) for r in test_next],
                                   targets),
    }
    for name, expert, merge_tokens in models:
        llm.merge_tokens = merge_tokens
        fig: dict[str, Any] = {}
        model_started = time.perf_counter()
        for kind in ("keep", "stop"):
            cal, test = by["calibration"][kind], by["test"][kind]
            cal_s = label_scores(llm, cal, expert, args.batch)
            test_s = label_scores(llm, test, expert, args.batch)
            cal_y = [int(r["answer"] == "yes") for r in cal]
            test_y = [int(r["answer"] == "yes") for r in test]
            t = best_threshold(cal_s, cal_y)
            fig[kind] = {"auc": roc_auc(test_s, test_y), "threshold": t,
                         "accuracy": accuracy(test_s, test_y, t),
                         "accuracy_at_0.5": accuracy(test_s, test_y, 0.5), "n": len(test),
                         "calibration": {"auc": roc_auc(cal_s, cal_y),
                                         "accuracy": accuracy(cal_s, cal_y, t)}}
        queries = next_queries(llm, test_next, expert, args.batch)
        hit = hits(retriever, queries, targets)
        # what MultiHopRAG sends with search_with_question: the query, then the question
        both = hits(retriever, [f"{q} {r['meta']['question']}" for q, r in
                                zip(queries, test_next, strict=True)], targets)
        fig["next"] = {"hit": sum(hit) / len(hit), "n": len(hit),
                       "hit_with_question": sum(both) / len(both),
                       "examples": [{"question": r["meta"]["question"], "query": q,
                                     "target": r["meta"]["target"], "hit": h}
                                    for r, q, h in list(zip(test_next, queries, hit,
                                                            strict=True))[:12]]}
        if args.candidate:
            cal_hit = hits(retriever, next_queries(llm, cal_next, expert, args.batch),
                           cal_targets)
            fig["next"]["calibration"] = {"hit": sum(cal_hit) / max(1, len(cal_hit)),
                                          "n": len(cal_hit)}
        fig["seconds"] = time.perf_counter() - model_started
        results[name] = fig
    seconds = time.perf_counter() - started

    print("## hop expert on HotpotQA test (held out; thresholds from items 300-499)\n")
    rows_out = []
    for name, fig in results.items():
        rows_out.append([name, f"{fig['keep']['auc']:.3f}", f"{fig['keep']['accuracy']:.3f}",
                         f"{fig['stop']['accuracy']:.3f} (t={fig['stop']['threshold']:.2f})",
                         f"{fig['stop']['accuracy_at_0.5']:.3f}", f"{fig['next']['hit']:.3f}",
                         f"{fig['next']['hit_with_question']:.3f}", f"{fig['seconds']:.0f}"])
    for name, hit in baseline.items():
        rows_out.append([name, "-", "-", "-", "-", f"{sum(hit) / len(hit):.3f}", "-", "-"])
    n = {k: results["hop expert"][k]["n"] for k in ("keep", "stop", "next")}
    print(table([f"model (keep {n['keep']}, stop {n['stop']}, next {n['next']} rows)",
                 "keep AUC", "keep acc", "stop acc (calibrated t)", "stop acc (t=0.5)",
                 "next-query hit@5", "query + question hit@5", "seconds"], rows_out))
    if args.candidate:
        print("\n## the same models on the calibration part (items 300-499: for the choice)\n")
        print(table(["model", "keep AUC", "keep acc", "stop AUC", "stop acc",
                     f"next-query hit@5 ({len(cal_next)} rows)"],
                    [[name, f"{fig['keep']['calibration']['auc']:.3f}",
                      f"{fig['keep']['calibration']['accuracy']:.3f}",
                      f"{fig['stop']['calibration']['auc']:.3f}",
                      f"{fig['stop']['calibration']['accuracy']:.3f}",
                      f"{fig['next']['calibration']['hit']:.3f}"]
                     for name, fig in results.items() if "calibration" in fig["next"]]))
    for name in ("hop expert", "hop candidate"):
        if name not in results:
            continue
        fig = results[name]
        met = {"keep_auc": fig["keep"]["auc"], "stop_accuracy": fig["stop"]["accuracy"],
               "next_hit": fig["next"]["hit"]}
        print(f"\ntargets, {name}: " + ", ".join(
            f"{k} {v:.3f} {'>=' if v >= TARGETS[k] else '<'} {TARGETS[k]}"
            for k, v in met.items()))
    expert = results["hop expert"]
    print(f"({seconds:.0f} s, all models)")
    for ex in expert["next"]["examples"]:
        print(f"- {ex['question'][:80]} -> {ex['query']!r} (gold {ex['target']!r}, "
              f"{'hit' if ex['hit'] else 'miss'})")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "baselines": {
            k: sum(v) / len(v) for k, v in baseline.items()}, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
