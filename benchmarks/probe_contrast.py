"""Does the refusal gate separate "the passages lack the answer" better when it asks how much
the passages themselves raise P(refusal)? (issue 40's refusal target)

The shipped gate refuses when P(the answer starts as the refusal), read at the first decoding
step over the question *with* its passages, reaches a threshold. Some questions the expert
would refuse anyway, passages or not (it does not know the entity); others it answers from
habit. The contrast reads a second, short forward pass over the question *alone* and scores

    contrast = p_with / (p_with + p_alone ** alpha)

(for alpha = 1: the sigmoid of log p_with - log p_alone, how far the passages move the
refusal). Both passes go through the public ``label_probabilities`` API.

- calibration split (the answer benchmark's, :mod:`expertrag.evaluation.answer_sets`, the same
  seeded ``--sample`` per set as ``bench_answers.py``): ROC AUC of each score per set; alpha
  and the threshold chosen by the shipped gate's rule (best balanced accuracy with false
  refusals <= ``--cap`` on every set);
- test split: the contrast at its threshold against the shipped gate at its own threshold,
  per set, refusal accuracy where the passages lack the answer and false refusals where they
  hold it, with the paired bootstrap 95% interval of each difference.

Probabilities are cached per split under ``--cache`` (keyed by the expert's adapter hash and
the sample), so a rerun only scores.

    python benchmarks/probe_contrast.py --data-dir ../shared/data --sample 60 \
        --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from _common import table
from bench_answers import _own_gate, expert_fingerprint
from probe_refusal import at_threshold, cached, refusal_rows, set_aucs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
EXPERT = "grounded-qa"
ALPHAS = (0.5, 1.0, 1.5, 2.0)


def contrast(p_with: Any, p_alone: Any, alpha: float) -> Any:
    """p_with / (p_with + p_alone ** alpha), elementwise (numpy arrays)."""
    import numpy as np

    p_with = np.clip(np.asarray(p_with, "float64"), 1e-12, 1.0)
    return p_with / (p_with + np.clip(np.asarray(p_alone, "float64"), 1e-12, 1.0) ** alpha)


def split_rows(data_dir: Path, split: str, sample: int | None,
               embedder: Any) -> list[tuple[str, str, list[Any], bool]]:
    """(set, question, top-5 passages, passages lack the answer) for ``split``, each set cut
    to ``bench_answers.py``'s seeded ``--sample`` of it."""
    from expertrag.evaluation.answer_sets import SETS, load_answer_set

    rows = []
    for name in SETS:
        aset = load_answer_set(name, split, data_dir, embedder=embedder, k=5)
        keep = list(range(len(aset.cases)))
        if sample and sample < len(keep):
            keep = sorted(random.Random(f"{name}-{split}").sample(keep, sample))
        cases, passages, present = aset.cases, aset.passages(), aset.present()
        rows.extend((name, cases[i].question, list(passages[i]), not present[i]) for i in keep)
    return rows


def probabilities(llm: Any, rows: list[tuple[str, str, list[Any], bool]],
                  batch: int) -> dict[str, Any]:
    """P(refusal) at the first step with the passages and with the question alone."""
    import numpy as np
    from tqdm import tqdm

    from expertrag.experts.grounded_qa import build_messages
    from expertrag.training.gate import refusal_probabilities

    def scored(messages: list[Any], what: str) -> Any:
        order = sorted(range(len(messages)), key=lambda i: len(str(messages[i])))  # less padding
        out = np.zeros(len(messages), "float64")
        step = 8 * batch  # progress in chunks of a few batches
        for s in tqdm(range(0, len(order), step), desc=what, unit="chunk"):
            idx = order[s:s + step]
            out[idx] = refusal_probabilities(llm, [{"messages": messages[i]} for i in idx],
                                             EXPERT, batch_size=batch)
        return out

    return {"p_with": scored([build_messages(q, ps) for _, q, ps, _ in rows], "with passages"),
            "p_alone": scored([build_messages(q, []) for _, q, _, _ in rows], "question alone"),
            "refuse": np.array([r[3] for r in rows]), "group": np.array([r[0] for r in rows])}


def auc_plot(path: Path, sets: list[str], aucs: dict[str, list[float]], title: str) -> None:
    """Bars of each score's calibration AUC, pooled then per set (``aucs``: name -> list in
    that order), with chance marked; written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = ["pooled", *sets]
    width = 0.8 / len(aucs)
    for j, (name, values) in enumerate(aucs.items()):
        ax.bar([i + j * width for i in range(len(labels))], values, width, label=name)
    ax.axhline(0.5, color="black", linewidth=0.8)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, fontsize=8,
                  rotation=15)
    ax.set_ylabel("ROC AUC, calibration split")
    ax.set_title(title)
    ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sample", type=int, help="questions per set and split (default all)")
    parser.add_argument("--cache", type=Path,
                        default=ROOT / "benchmarks" / ".cache" / "contrast")
    parser.add_argument("--out", type=Path, help="folder for the plot")
    parser.add_argument("--cap", type=float, default=0.05,
                        help="largest false-refusal share allowed on any calibration set")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        sys.exit(f"error: no data folder at {args.data_dir} (see ../shared/data/README.md)")

    from expertrag import ExpertLLM
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.errors import InputError
    from expertrag.experts import attach_shipped, shipped_experts
    from expertrag.training.gate import pick_threshold

    started = time.perf_counter()
    llm = ExpertLLM().load()
    attach_shipped(llm)
    digest = expert_fingerprint(shipped_experts()[EXPERT])
    shipped_t = _own_gate(llm, EXPERT)
    if shipped_t is None:
        sys.exit(f"error: the shipped {EXPERT} expert has no refusal gate")
    embedder = MemoEmbedder(Embedder())
    tag = f"s{args.sample}" if args.sample else "all"
    parts = {}
    for split in ("calibration", "test"):
        def make(split: str = split) -> dict[str, Any]:
            return probabilities(llm, split_rows(args.data_dir, split, args.sample, embedder),
                                 args.batch)
        parts[split] = cached(args.cache / f"{EXPERT}-{digest}-{split}-{tag}.npz", make)
    cal, test = parts["calibration"], parts["test"]
    sets = sorted(set(cal["group"].tolist()))
    groups = cal["group"].tolist()


    # ------------------------------------------------------------- calibration: choose
    scores = {"refusal token (shipped gate)": (None, cal["p_with"]),
              "question alone": (None, cal["p_alone"])}
    scores.update({f"contrast, alpha {a:g}": (a, contrast(cal["p_with"], cal["p_alone"], a))
                   for a in ALPHAS})
    rows, picks, figures = [], {}, {}
    for name, (alpha, score) in scores.items():
        try:
            pick = pick_threshold(score, cal["refuse"], args.cap, groups=groups)
        except InputError as exc:  # a score no threshold keeps within the cap
            pick = {"error": str(exc)}
        picks[name] = (alpha, pick)
        at = pick.get("at_threshold", {})
        figures[name] = {"auc": set_aucs(score, cal), "pick": pick}
        rows.append([name, *[f"{a:.3f}" for a in set_aucs(score, cal)],
                     f"{pick['threshold']:.4f}" if "threshold" in pick else "-",
                     f"{at.get('refusal_accuracy', float('nan')):.3f}",
                     f"{at.get('balanced_accuracy', float('nan')):.3f}"])
    print(f"\nCalibration split ({len(groups)} questions, {int(cal['refuse'].sum())} without "
          f"the answer in the top-5): ROC AUC against 'the passages lack the answer', pooled "
          f"and per set; threshold keeping false refusals <= {args.cap:.0%} on every set\n")
    print(table(["score", "AUC pooled", *[f"AUC {s}" for s in sets], "threshold",
                 "refusal acc", "balanced acc"], rows))
    contrasts = {n: v for n, v in picks.items() if v[0] is not None and "threshold" in v[1]}
    chosen = max(contrasts, key=lambda n: contrasts[n][1]["at_threshold"]["balanced_accuracy"])
    alpha, pick = contrasts[chosen]
    print(f"\nchosen on calibration: {chosen}, threshold {pick['threshold']:.4f} (shipped "
          f"gate's threshold {shipped_t:.4f})")

    # ---------------------------------------------------------------------- test: report
    new = at_threshold(contrast(test["p_with"], test["p_alone"], alpha), test, pick["threshold"],
                       pooled=True)
    old = at_threshold(test["p_with"], test, shipped_t, pooled=True)
    out = refusal_rows(new, old, [*sets, "pooled"])
    test_auc = {"refusal token": set_aucs(test["p_with"], test),
                chosen: set_aucs(contrast(test["p_with"], test["p_alone"], alpha), test)}
    print(f"\nTest split ({len(test['group'])} questions): the contrast at its threshold "
          f"against the shipped gate at its own, same questions\n")
    print(table(["set", "measure", "n", "shipped gate", "contrast", "difference (95% CI)"],
                out))
    print("\nTest AUC, pooled and per set (" + ", ".join(sets) + "): " + "; ".join(
        f"{n} " + " / ".join(f"{a:.3f}" for a in v) for n, v in test_auc.items()))
    print(f"\n{time.perf_counter() - started:.0f} s")

    if args.out is not None:
        auc_plot(args.out / f"contrast-{time.strftime('%Y-%m-%d')}.png", sets,
                 {name: f["auc"] for name, f in figures.items()},
                 "Refusal score: the token alone, the question alone, the contrast")

if __name__ == "__main__":
    main()
