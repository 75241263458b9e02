"""Can grounded-qa's hidden states tell "the passages do not hold the answer" better than its
refusal token? A linear probe against the shipped refusal gate (issue 40's refusal target).

The shipped gate reads P(the answer starts as the refusal) from the first decoding step. This
probe reads the hidden state at the prompt's last position (the one that predicts the first
answer token) of several layers of the same forward pass, and fits a logistic regression per
layer on training rows over retrieved passages (:mod:`expertrag.training.retrieved`: SQuAD 2.0
15 articles, 600 answerable + 600 unanswerable questions drawn; HotpotQA train, own paragraphs
with half the items' gold withheld, and the open pool; HaluEval's train part, 40% of rows with
the answer-holding passages withheld; label: the row's target is the refusal).

- calibration split of the answer benchmark (:mod:`expertrag.evaluation.answer_sets`): each
  layer's and regulariser's ROC AUC, and the probe chosen (best balanced accuracy at the
  threshold that keeps false refusals within ``--cap`` on every set, as the shipped gate's
  threshold was chosen);
- test split: the chosen probe at its threshold against the shipped token gate at its own,
  per set: refusal accuracy where the passages lack the answer, false refusals where they
  hold it, with the paired bootstrap 95% interval of each difference.

Features are cached per split under ``--cache`` (keyed by the expert's adapter hash), so a
rerun only fits. Needs the ``eval`` extra (scikit-learn, scipy, matplotlib).

    python benchmarks/probe_refusal.py --data-dir ../shared/data --out benchmarks/results
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from _common import table
from bench_answers import expert_fingerprint

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
EXPERT = "grounded-qa"
LAYERS = (6, 10, 14, 18, 22, 26, 30)
REGULARISERS = (0.001, 0.003, 0.01, 0.1)


def retrieved_rows(data_dir: Path, embedder: Any, seed: int = 7) -> dict[str, list[Any]]:
    """The grounded-qa v4 builders' rows over retrieved passages, per source (another seed
    than the recipe's; none from an evaluation set)."""
    from expertrag.datasets import (
        HALUEVAL_QA,
        HOTPOT_TRAIN,
        SQUAD_ARTICLES,
        load_halueval,
        load_hotpot,
        load_squad,
    )
    from expertrag.training.retrieved import (
        build_halueval_retrieved,
        build_hotpot_retrieved,
        build_squad_retrieved,
    )

    hotpot = load_hotpot(data_dir / HOTPOT_TRAIN)
    return {
        "squad2-15": build_squad_retrieved(load_squad(data_dir / SQUAD_ARTICLES), embedder,
                                           max_answerable=600, max_impossible=600, seed=seed),
        "hotpotqa": build_hotpot_retrieved(hotpot, embedder, seed=seed),
        "hotpotqa-open": build_hotpot_retrieved(hotpot, embedder, seed=seed, open_pool=True),
        "halueval": build_halueval_retrieved(load_halueval(data_dir / HALUEVAL_QA), embedder,
                                             seed=seed, p_withheld=0.4),
    }


def training_rows(data_dir: Path, embedder: Any) -> list[tuple[str, Any, bool]]:
    """(source, messages, refuse) rows over retrieved passages, none from an evaluation set."""
    from expertrag.experts.grounded_qa import REFUSAL

    return [(src, r["messages"], r["answer"] == REFUSAL)
            for src, rows in retrieved_rows(data_dir, embedder).items() for r in rows]


def benchmark_rows(data_dir: Path, split: str, embedder: Any) -> list[tuple[str, Any, bool]]:
    """(set, messages, refuse) for every question of ``split``: refuse where the top-5
    passages do not hold the answer (the benchmark's own label)."""
    from expertrag.evaluation.answer_sets import SETS, load_answer_set
    from expertrag.experts.grounded_qa import build_messages

    out = []
    for name in SETS:
        aset = load_answer_set(name, split, data_dir, embedder=embedder, k=5)
        for case, passages, here in zip(aset.cases, aset.passages(), aset.present(),
                                        strict=True):
            out.append((name, build_messages(case.question, passages), not here))
    return out


def features(llm: Any, rows: list[tuple[str, Any, bool]], batch: int) -> dict[str, Any]:
    """Each row's hidden state at the prompt's last position for every layer in LAYERS
    (``hidden_states[L]``: the output of layer L; the last one after the final norm) and the
    token gate's P(refusal), from one forward pass with the expert."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from expertrag.experts.grounded_qa import REFUSAL
    from expertrag.models.chat import render_prompt
    from expertrag.models.decoding import left_pad

    tok = llm.tokenizer
    first = tok(REFUSAL, add_special_tokens=False)["input_ids"][0]
    encoded = [tok(render_prompt(tok, r[1]), add_special_tokens=False)["input_ids"]
               for r in rows]
    order = sorted(range(len(rows)), key=lambda i: len(encoded[i]))  # less padding
    hidden = np.zeros((len(rows), len(LAYERS), llm.base_model.config.hidden_size), "float32")
    p_token = np.zeros(len(rows), "float32")
    pad = tok.pad_token_id or 0

    def step(idx: list[int]) -> None:
        # the model's own forward (private hooks: the public API returns no hidden states)
        extra = llm._prepare([EXPERT] * len(idx), sum(len(encoded[i]) for i in idx))
        inputs = left_pad([encoded[i] for i in idx], pad, llm.base_model.device)
        with torch.inference_mode():
            out = llm._model(**inputs, **extra, logits_to_keep=1, output_hidden_states=True)
            probs = torch.softmax(out.logits[:, -1].float(), dim=-1)[:, first]
            for j, i in enumerate(idx):
                p_token[i] = float(probs[j])
                for k, layer in enumerate(LAYERS):
                    hidden[i, k] = out.hidden_states[layer][j, -1].float().numpy()

    for s in tqdm(range(0, len(order), batch), desc="features", unit="batch"):
        llm._worker.run(lambda s=s: step(order[s:s + batch]))
    return {"hidden": hidden, "p_token": p_token,
            "refuse": np.array([r[2] for r in rows]), "group": np.array([r[0] for r in rows])}


def cached(path: Path, make: Any) -> dict[str, Any]:
    """``make()``'s arrays, kept in ``path`` (written atomically) for the next run."""
    import numpy as np

    if path.is_file():
        with np.load(path) as f:
            return dict(f)
    data = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **data)
    os.replace(tmp, path)
    return data


def fit(train: dict[str, Any], k: int, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    return model.fit(train["hidden"][:, k], train["refuse"])


def at_threshold(p: Any, data: dict[str, Any], threshold: float,
                 pooled: bool = False) -> dict[str, dict[str, Any]]:
    """Per set: who refuses right (answer absent) and who refuses wrongly (present); with
    ``pooled``, also every set together under "pooled"."""
    out = {}
    for g in sorted(set(data["group"].tolist())):
        m = data["group"] == g
        refused = p[m] >= threshold
        out[g] = {"absent": refused[data["refuse"][m]].tolist(),
                  "present": refused[~data["refuse"][m]].tolist()}
    if pooled:
        out["pooled"] = {w: [x for g in list(out) for x in out[g][w]]
                         for w in ("absent", "present")}
    return out


def set_aucs(score: Any, data: dict[str, Any]) -> list[float]:
    """ROC AUC of ``score`` against "the passages lack the answer": pooled, then each set
    in sorted order (numpy arrays ``data["refuse"]`` and ``data["group"]``)."""
    from expertrag.training.trainer import roc_auc

    masks = [data["group"] == g for g in sorted(set(data["group"].tolist()))]
    return [roc_auc(score.tolist(), data["refuse"].tolist())] + [
        roc_auc(score[m].tolist(), data["refuse"][m].tolist()) for m in masks]


def refusal_rows(new: dict[str, dict[str, list]], old: dict[str, dict[str, list]],
                 groups: list[str]) -> list[list[str]]:
    """Table rows, per group: ``old``'s and ``new``'s refusal accuracy (answer absent) and
    false refusals (present) on the same questions, with the paired 95% interval of the
    difference (``at_threshold``'s output for each score)."""
    import numpy as np

    from expertrag.evaluation.stats import compare

    out = []
    for g in groups:
        for what, label in (("absent", "refusal acc (absent)"),
                            ("present", "false refusals (present)")):
            a, b = new[g][what], old[g][what]
            if not a:
                continue
            cmp = compare([float(x) for x in a], [float(x) for x in b], binary=True)
            verdict = "tie" if cmp.low <= 0 <= cmp.high else ("higher" if cmp.diff > 0
                                                               else "lower")
            out.append([g, label, str(len(a)), f"{np.mean(b):.3f}", f"{np.mean(a):.3f}",
                        f"{cmp.diff:+.3f} [{cmp.low:+.3f}, {cmp.high:+.3f}] {verdict}"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache" / "probe")
    parser.add_argument("--out", type=Path, help="folder for the plot")
    parser.add_argument("--cap", type=float, default=0.05,
                        help="largest false-refusal share allowed on any calibration set")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        sys.exit(f"error: no data folder at {args.data_dir} (see ../shared/data/README.md)")


    from expertrag import ExpertLLM
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.experts import attach_shipped, shipped_experts
    from expertrag.training.gate import pick_threshold

    started = time.perf_counter()
    llm = ExpertLLM().load()
    attach_shipped(llm)
    digest = expert_fingerprint(shipped_experts()[EXPERT])
    shipped_t = llm.expert_info(EXPERT)["gate"][1]
    embedder = MemoEmbedder(Embedder())
    parts = {}
    for part in ("train", "calibration", "test"):
        def make(part: str = part) -> dict[str, Any]:
            rows = (training_rows(args.data_dir, embedder) if part == "train"
                    else benchmark_rows(args.data_dir, part, embedder))
            return features(llm, rows, args.batch)
        parts[part] = cached(args.cache / f"{EXPERT}-{digest}-{part}.npz", make)
    train, cal, test = parts["train"], parts["calibration"], parts["test"]
    groups = cal["group"].tolist()

    # ---------------------------------------------------------------- calibration: choose
    def auc_row(p: Any, data: dict[str, Any]) -> list[str]:
        return [f"{a:.3f}" for a in set_aucs(p, data)]

    sets = sorted(set(groups))
    rows, choices, aucs = [], [], {}
    token_pick = pick_threshold(cal["p_token"], cal["refuse"], args.cap, groups=groups)
    rows.append(["token gate (shipped)", "-", *auc_row(cal["p_token"], cal),
                 f"{token_pick['at_threshold']['refusal_accuracy']:.3f}"])
    for k, layer in enumerate(LAYERS):
        for c in REGULARISERS:
            model = fit(train, k, c)
            p = model.predict_proba(cal["hidden"][:, k])[:, 1]
            pick = pick_threshold(p, cal["refuse"], args.cap, groups=groups)
            aucs[(layer, c)] = pick["auc"]
            choices.append((pick["at_threshold"]["balanced_accuracy"], layer, c, k,
                            pick["threshold"], model))
            rows.append([f"probe, layer {layer}", f"{c:g}", *auc_row(p, cal),
                         f"{pick['at_threshold']['refusal_accuracy']:.3f}"])
    print(f"\nCalibration split ({len(groups)} questions): ROC AUC of the refusal score "
          f"against 'the passages lack the answer', pooled and per set; pooled refusal "
          f"accuracy at the threshold keeping false refusals <= {args.cap:.0%} on every set\n")
    print(table(["score", "C", "AUC pooled", *[f"AUC {s}" for s in sets],
                 "refusal acc at cap"], rows))
    _, layer, c, k, threshold, model = max(choices, key=lambda x: x[0])
    print(f"\nchosen on calibration: layer {layer}, C {c:g}, threshold {threshold:.4f} "
          f"(token gate: shipped threshold {shipped_t:.4f})")

    # ---------------------------------------------------------------------- test: report
    probe = at_threshold(model.predict_proba(test["hidden"][:, k])[:, 1], test, threshold)
    token = at_threshold(test["p_token"], test, shipped_t)
    out = refusal_rows(probe, token, sorted(probe))
    print("\nTest split: the chosen probe against the shipped token gate, same questions\n")
    print(table(["set", "measure", "n", "token gate", "probe", "difference (95% CI)"], out))
    print(f"\n{time.perf_counter() - started:.0f} s")

    if args.out is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.out.mkdir(parents=True, exist_ok=True)
        fig, ax = plt.subplots(figsize=(6.5, 3.6))
        for c in REGULARISERS:
            ax.plot(LAYERS, [aucs[(layer, c)] for layer in LAYERS], marker="o", label=f"C={c:g}")
        ax.axhline(token_pick["auc"], color="black", linestyle="--", label="token gate")
        ax.set_xlabel("layer of the hidden state")
        ax.set_ylabel("ROC AUC, calibration split")
        ax.set_title("Refusal score: linear probe per layer vs the refusal token")
        ax.legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize=8)
        fig.tight_layout()
        path = args.out / f"probe-refusal-{time.strftime('%Y-%m-%d')}.png"
        fig.savefig(path, dpi=120)
        print(f"plot: {path}")


if __name__ == "__main__":
    main()
