"""Does a small trained cross-encoder tell "the passages lack the answer" better than the
refusal gate's first-token P(refusal)? (issue 40's refusal target)

Three scores read from the 135M grounded-qa expert (its refusal token, a linear probe of its
hidden states, a contrast with the question alone) all separate answer-absent prompts at
ROC AUC 0.64-0.72; the target needs about 0.9. This probe trains a separate judge instead:
all-MiniLM-L6-v2 (the embedded 22M encoder) fine-tuned as a cross-encoder on (question,
passage) pairs labelled "this passage holds the answer", from the same retrieved rows the
grounded-qa v4 recipe trains on (SQuAD 2.0's 15 training articles with their unanswerable
questions, HotpotQA train with gold paragraphs withheld, HaluEval; no evaluation set). A
question's score is the highest pair score over its top-5 passages.

- calibration split (the answer benchmark's, the same seeded ``--sample`` per set as
  ``bench_answers.py``): ROC AUC per set of the cross-encoder, the gate's token and their
  logistic blend (fitted on calibration); each threshold chosen by the shipped gate's rule
  (best balanced accuracy with false refusals <= ``--cap`` on every set);
- test split: the best of them on calibration against the shipped gate at its own
  threshold, per set, with the paired bootstrap 95% interval of each difference.

The gate's P(refusal) comes from ``probe_contrast.py``'s cache (run it first; same
``--sample``). The trained judge is kept under ``--cache`` for reruns.

    python benchmarks/probe_answerability.py --data-dir ../shared/data --sample 60 \
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
from probe_contrast import auc_plot, split_rows
from probe_refusal import at_threshold, refusal_rows, retrieved_rows, set_aucs

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
EXPERT = "grounded-qa"


def passage_labels(meta: dict[str, Any]) -> list[int]:
    """1 for each passage of a built row that is gold and holds its answer (for yes/no
    answers: each cited gold passage), else 0; all 0 on a refusal row."""
    from expertrag.evaluation.metrics import holds_answer, is_yes_no

    if not meta["has_oracle"]:
        return [0] * len(meta["passages"])
    gold, cited = meta["gold_answer"], set(meta["oracle_passages"])
    yes_no = is_yes_no([gold])
    return [int(n in cited and (yes_no or holds_answer(text, [gold])))
            for n, text in enumerate(meta["passages"], 1)]


def training_pairs(data_dir: Path, embedder: Any) -> list[tuple[str, str, int]]:
    """(question, passage, holds the answer) over the v4 builders' retrieved rows (as
    ``probe_refusal.py`` builds them; none from an evaluation set)."""
    return [(r["meta"]["question"], text, label)
            for rows in retrieved_rows(data_dir, embedder).values() for r in rows
            for text, label in zip(r["meta"]["passages"], passage_labels(r["meta"]),
                                   strict=True)]


def train_judge(pairs: list[tuple[str, str, int]], folder: Path, epochs: int = 1,
                batch: int = 16, max_length: int = 256, lr: float = 3e-5, seed: int = 0) -> None:
    """Fine-tune the embedded MiniLM as a one-logit cross-encoder (binary cross-entropy,
    positives weighted by the class ratio) and save it to ``folder`` (safetensors)."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from expertrag.embeddings.sentence import resolve_model

    torch.manual_seed(seed)
    path = resolve_model("all-minilm-l6-v2")
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    pos = sum(label for _, _, label in pairs)
    loss_fn = torch.nn.BCEWithLogitsLoss(
        pos_weight=torch.tensor((len(pairs) - pos) / max(pos, 1)))
    order = list(range(len(pairs)))
    steps = epochs * ((len(order) + batch - 1) // batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    model.train()
    bar = tqdm(total=steps, desc="train answerability judge", unit="step")
    for epoch in range(epochs):
        random.Random(seed + epoch).shuffle(order)
        for s in range(0, len(order), batch):
            chunk = [pairs[i] for i in order[s:s + batch]]
            enc = tok([q for q, _, _ in chunk], [p for _, p, _ in chunk], truncation="only_second",
                      max_length=max_length, padding=True, return_tensors="pt")
            logits = model(**enc).logits.squeeze(-1)
            loss = loss_fn(logits, torch.tensor([float(y) for _, _, y in chunk]))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    os.replace(tmp, folder)


def question_scores(folder: Path, rows: list[tuple[str, str, list[Any], bool]]) -> Any:
    """Each question's highest P(passage holds the answer) over its passages, through the
    project's own reranker (length-sorted batches)."""
    import numpy as np

    from expertrag.rerank import CrossEncoderReranker

    judge = CrossEncoderReranker(str(folder), activation="sigmoid", max_length=256).load()
    pairs, owner = [], []
    for i, (_, question, passages, _) in enumerate(rows):
        for p in passages:
            pairs.append((question, getattr(p, "text", p)))
            owner.append(i)
    out = np.zeros(len(rows), "float64")  # a question without passages: nothing holds it
    for i, s in zip(owner, judge.score_pairs(pairs), strict=True):
        out[i] = max(out[i], s)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--sample", type=int, help="questions per set and split (default all)")
    parser.add_argument("--gate-cache", type=Path,
                        default=ROOT / "benchmarks" / ".cache" / "contrast",
                        help="probe_contrast.py's cache of the gate's P(refusal)")
    parser.add_argument("--cache", type=Path,
                        default=ROOT / "benchmarks" / ".cache" / "answerability")
    parser.add_argument("--out", type=Path, help="folder for the plot")
    parser.add_argument("--cap", type=float, default=0.05,
                        help="largest false-refusal share allowed on any calibration set")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-pairs", type=int, default=8000,
                        help="training pairs kept (seeded), to bound the CPU time")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        sys.exit(f"error: no data folder at {args.data_dir} (see ../shared/data/README.md)")

    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.errors import InputError
    from expertrag.experts import shipped_experts
    from expertrag.training.gate import pick_threshold

    started = time.perf_counter()
    digest = expert_fingerprint(shipped_experts()[EXPERT])
    tag = f"s{args.sample}" if args.sample else "all"
    gate = {}
    for split in ("calibration", "test"):
        path = args.gate_cache / f"{EXPERT}-{digest}-{split}-{tag}.npz"
        if not path.is_file():
            sys.exit(f"error: no gate probabilities at {path}: run probe_contrast.py first "
                     f"with --sample {args.sample}")
        with np.load(path) as f:
            gate[split] = dict(f)
    from expertrag import ExpertLLM
    from expertrag.experts import attach_shipped

    llm = ExpertLLM()
    attach_shipped(llm)
    shipped_t = _own_gate(llm, EXPERT)
    if shipped_t is None:
        sys.exit(f"error: the shipped {EXPERT} expert has no refusal gate")

    embedder = MemoEmbedder(Embedder())
    folder = args.cache / f"judge-e{args.epochs}-p{args.max_pairs}"
    if not folder.is_dir():
        pairs = training_pairs(args.data_dir, embedder)
        random.Random(0).shuffle(pairs)
        pairs = pairs[:args.max_pairs]
        print(f"{len(pairs)} training pairs, {sum(y for _, _, y in pairs)} holding the answer")
        folder.parent.mkdir(parents=True, exist_ok=True)
        train_judge(pairs, folder, epochs=args.epochs)
    parts = {}
    for split in ("calibration", "test"):
        rows = split_rows(args.data_dir, split, args.sample, embedder)
        refuse = np.array([r[3] for r in rows])
        if not (refuse == gate[split]["refuse"]).all():
            sys.exit(f"error: the {split} rows differ from the gate cache's")
        parts[split] = {"judge": question_scores(folder, rows), "token": gate[split]["p_with"],
                        "refuse": refuse, "group": gate[split]["group"]}
    cal, test = parts["calibration"], parts["test"]
    sets = sorted(set(cal["group"].tolist()))

    def feats(d: dict[str, Any]) -> Any:  # log P(refusal), log P(no passage holds it)
        return np.log(np.clip(np.column_stack([d["token"], 1 - d["judge"]]), 1e-9, 1))

    blend = LogisticRegression(max_iter=1000).fit(feats(cal), cal["refuse"])
    for d in (cal, test):
        d["refuse-judge"] = 1 - d["judge"]  # high = refuse
        d["blend"] = blend.predict_proba(feats(d))[:, 1]


    names = {"refusal token (shipped gate)": "token", "cross-encoder judge": "refuse-judge",
             "blend (logistic, fitted on calibration)": "blend"}
    rows, picks, figures = [], {}, {}
    for name, key in names.items():
        try:
            pick = pick_threshold(cal[key], cal["refuse"], args.cap,
                                  groups=cal["group"].tolist())
        except InputError as exc:
            pick = {"error": str(exc)}
        picks[name] = pick
        at = pick.get("at_threshold", {})
        figures[name] = set_aucs(cal[key], cal)
        rows.append([name, *[f"{a:.3f}" for a in figures[name]],
                     f"{pick['threshold']:.4f}" if "threshold" in pick else "-",
                     f"{at.get('refusal_accuracy', float('nan')):.3f}",
                     f"{at.get('balanced_accuracy', float('nan')):.3f}"])
    print(f"\nCalibration split ({len(cal['group'])} questions, {int(cal['refuse'].sum())} "
          f"without the answer in the top-5): ROC AUC, pooled and per set; threshold keeping "
          f"false refusals <= {args.cap:.0%} on every set\n")
    print(table(["score", "AUC pooled", *[f"AUC {s}" for s in sets], "threshold",
                 "refusal acc", "balanced acc"], rows))
    usable = {n: p for n, p in picks.items() if "threshold" in p and names[n] != "token"}
    if not usable:
        sys.exit("no new score keeps false refusals within the cap on calibration")
    chosen = max(usable, key=lambda n: usable[n]["at_threshold"]["balanced_accuracy"])
    key = names[chosen]
    print(f"\nchosen on calibration: {chosen}, threshold {usable[chosen]['threshold']:.4f}")

    new = at_threshold(test[key], test, usable[chosen]["threshold"], pooled=True)
    old = at_threshold(test["token"], test, shipped_t, pooled=True)
    print(f"\nTest split ({len(test['group'])} questions): {chosen} at its threshold against "
          "the shipped gate at its own, same questions\n")
    print(table(["set", "measure", "n", "shipped gate", "new", "difference (95% CI)"],
                refusal_rows(new, old, [*sets, "pooled"])))
    print("\nTest AUC, pooled and per set (" + ", ".join(sets) + "): " + "; ".join(
        f"{n} " + " / ".join(f"{a:.3f}" for a in set_aucs(test[k], test))
        for n, k in names.items()))
    print(f"\n{time.perf_counter() - started:.0f} s")

    if args.out is not None:
        auc_plot(args.out / f"answerability-{time.strftime('%Y-%m-%d')}.png", sets, figures,
                 "Refusal score: gate token against a trained answerability judge")


if __name__ == "__main__":
    main()
