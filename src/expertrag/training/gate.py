"""Calibrating a grounded expert's refusal gate.

Greedy decoding refuses whenever the refusal's single first token ("I") outscores each
answer's first token, although an answer's probability is spread over many first tokens: a
model that gives the refusal 30% and the answer 70% still refuses. The gate replaces that
argmax with a threshold on P(the answer starts as the refusal), read from the first decoding
step (``ExpertLLM.generate`` applies it, see its docstring). This module picks the
threshold on labelled rows the expert was not trained on (the best balanced accuracy of
"refuse" against "the passages do not hold the answer") and records it in the expert's
``expertrag_expert.json``, so every caller of the expert gets it.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expertrag.errors import InputError
from expertrag.experts.card import EVIDENCE_GATE_KEY, check_num_beams, update_card
from expertrag.experts.grounded_qa import REFUSAL, build_messages


def refusal_probabilities(llm: Any, rows: Sequence[dict[str, Any]], expert: str | None,
                          batch_size: int = 8) -> list[float]:
    """P(first token of the refusal) for each row's prompt, over the whole vocabulary."""
    first = llm.tokenizer(REFUSAL, add_special_tokens=False)["input_ids"][0]
    label = llm.tokenizer.decode([first])
    probs = llm.label_probabilities([r["messages"] for r in rows], labels=(label,),
                                    expert=expert, batch_size=batch_size, normalize=False)
    return [p[label] for p in probs]


def pick_threshold(probabilities: Sequence[float], refuse: Sequence[bool],
                   max_false_refusals: float | None = None,
                   groups: Sequence[str] | None = None) -> dict[str, Any]:
    """The threshold of best balanced accuracy (ties: the highest, so that the expert
    answers rather than refuses) and the figures it gives, with 0.5 for comparison.

    ``max_false_refusals`` caps the share of answerable rows refused: the pick is then the
    best balanced accuracy among the thresholds that keep within the cap (a wrong refusal
    costs a user more than a wrong answer that cites its passage). With ``groups`` (one
    label per row, e.g. its data set) the cap holds in every group, not only pooled, and the
    figures are also given per group."""
    from expertrag.training.trainer import roc_auc

    probs = [float(p) for p in probabilities]
    flags = [bool(r) for r in refuse]
    labels = [str(g) for g in groups] if groups is not None else ["all"] * len(probs)
    if not len(probs) == len(flags) == len(labels):
        raise InputError("probabilities, refuse and groups must have one entry per row")
    pairs = sorted(zip(probs, flags, strict=True))
    pos = sum(r for _, r in pairs)
    neg = len(pairs) - pos
    if not pos or not neg:
        raise InputError("calibrating a refusal gate needs rows of both kinds")

    def figures(t: float, rows: Sequence[tuple[float, bool]] = pairs) -> dict[str, float]:
        n_pos = sum(r for _, r in rows)
        n_neg = len(rows) - n_pos
        refused_ok = sum(p >= t for p, r in rows if r) / n_pos if n_pos else float("nan")
        false_ref = sum(p >= t for p, r in rows if not r) / n_neg if n_neg else 0.0
        return {"refusal_accuracy": refused_ok, "false_refusal_rate": false_ref,
                "balanced_accuracy": 0.5 * (refused_ok + 1 - false_ref)}

    by_group: dict[str, list[tuple[float, bool]]] = {}
    for p, r, g in zip(probs, flags, labels, strict=True):
        by_group.setdefault(g, []).append((p, r))

    def within_cap(t: float) -> bool:
        return max_false_refusals is None or all(
            figures(t, rows)["false_refusal_rate"] <= max_false_refusals
            for rows in by_group.values())

    values = sorted({p for p, _ in pairs})
    cuts = [0.0, *[(a + b) / 2 for a, b in itertools.pairwise(values)], 1.0]
    if max_false_refusals is not None and not 0 <= max_false_refusals <= 1:
        raise InputError(f"max_false_refusals must lie in [0, 1], got {max_false_refusals!r}")
    scored = [(figures(t)["balanced_accuracy"], t) for t in cuts if within_cap(t)]
    if not scored:  # rows at probability 1.0 are refused at every threshold
        raise InputError(f"no threshold keeps false refusals within {max_false_refusals} "
                         "in every group")
    best = max(b for b, _ in scored)
    threshold = max(t for b, t in scored if b == best)
    out = {"threshold": round(threshold, 4), "at_threshold": figures(threshold),
           "at_0.5": figures(0.5), "auc": roc_auc([p for p, _ in pairs],
                                                  [int(r) for _, r in pairs]),
           "rows": len(pairs), "refusal_rows": pos}
    if max_false_refusals is not None:
        out["max_false_refusals"] = max_false_refusals
    if groups is not None:
        out["groups"] = {g: {**figures(threshold, rows), "rows": len(rows)}
                         for g, rows in by_group.items()}
    return out


def record_gate(folder: str | os.PathLike[str], threshold: float,
                calibration: dict[str, Any]) -> None:
    """Write the gate into the expert's metadata and model card (atomic rewrite)."""
    at = calibration["at_threshold"]
    cap = calibration.get("max_false_refusals")
    capped = (f" (the best balanced accuracy among thresholds refusing at most {cap:.0%} "
              "of the answerable rows)") if cap is not None else ""
    _record(folder, "refusal_gate", {"text": REFUSAL, "threshold": threshold,
                                     "calibration": calibration}, "Refusal gate", (
        f"The expert refuses only when P(its answer starts with "
        f"`{REFUSAL}`) >= {threshold:.3f}, read from the first decoding step "
        "(`ExpertLLM.generate` applies it; `refusal_gate=False` turns it off). Calibrated "
        f"on {calibration['rows']} held-out rows ({calibration['refusal_rows']} without "
        f"the answer; {calibration.get('source', 'see metadata')}): AUC "
        f"{calibration['auc']:.3f}, refusal accuracy {at['refusal_accuracy']:.3f}, false "
        f"refusals {at['false_refusal_rate']:.3f} (greedy argmax-like 0.5: "
        f"{calibration['at_0.5']['refusal_accuracy']:.3f} / "
        f"{calibration['at_0.5']['false_refusal_rate']:.3f}){capped}."))


def _record(folder: str | os.PathLike[str], key: str, value: dict[str, Any], heading: str,
            section: str, tag: str = "") -> None:
    """Set ``key`` in the expert's metadata and replace (or add) the card's section whose
    title starts with ``heading`` (up to the next section), both rewritten atomically."""
    folder = Path(folder)
    update_card(folder, **{key: value})
    card = folder / "README.md"
    if card.is_file():
        text = re.sub(rf"\n*## {re.escape(heading)}[^\n]*\n.*?(?=\n## |\Z)", "",
                      card.read_text(encoding="utf-8"), flags=re.S)
        text = re.sub(r"\n+(?=## )", "\n\n", text)  # one blank line before each section
        _atomic_write(card, f"{text.rstrip()}\n\n## {heading}{tag}\n\n"
                            f"{section}\n")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def calibrate_gate(llm: Any, expert: str, rows: Sequence[dict[str, Any]],
                   folder: str | os.PathLike[str] | None = None,
                   source: str = "", max_false_refusals: float | None = None) -> dict[str, Any]:
    """Pick the threshold for ``expert`` on ``rows`` (grounded rows whose ``answer`` is the
    refusal or not) and, with ``folder``, record it there."""
    probs = refusal_probabilities(llm, rows, expert)
    result = pick_threshold(probs, [r["answer"] == REFUSAL for r in rows], max_false_refusals)
    result["source"] = source
    if folder is not None:
        record_gate(folder, result["threshold"], result)
    return result


def calibrate_on_answer_sets(llm: Any, expert: str, data_dir: str | os.PathLike[str],
                             max_false_refusals: float = 0.05, k: int = 5,
                             split: str = "calibration", embedder: Any = None,
                             folder: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Pick ``expert``'s refusal threshold on the answer benchmark's calibration split
    (:mod:`expertrag.evaluation.answer_sets`: single- and multi-hop questions over their
    top-``k`` retrieved passages, "refuse" where the passages do not hold the answer), with
    false refusals within ``max_false_refusals`` on every set; with ``folder``, record it."""
    from expertrag.embeddings import Embedder, MemoEmbedder
    from expertrag.evaluation.answer_sets import SETS, load_answer_set

    embedder = embedder or MemoEmbedder(Embedder())
    probs: list[float] = []
    refuse: list[bool] = []
    groups: list[str] = []
    for name in SETS:
        aset = load_answer_set(name, split, data_dir, embedder=embedder, k=k)
        rows = [{"messages": build_messages(c.question, p)}
                for c, p in zip(aset.cases, aset.passages(), strict=True)]
        probs += refusal_probabilities(llm, rows, expert)
        refuse += [not here for here in aset.present()]
        groups += [name] * len(rows)
    result = pick_threshold(probs, refuse, max_false_refusals, groups=groups)
    result["source"] = (f"the answer benchmark's {split} split ({', '.join(SETS)}), top-{k} "
                        "hybrid-retrieved passages, refusal where they do not hold the answer; "
                        f"false refusals at most {max_false_refusals:.0%} on every set")
    if folder is not None:
        record_gate(folder, result["threshold"], result)
    return result


# ----------------------------------------------------------------- the evidence gate
def evidence_scores(scorer: Any, rows: Sequence[dict[str, Any]]) -> list[list[float]]:
    """P(relevant) of each row's passages for its question (``meta["question"]`` and
    ``meta["passages"]``, as ``build_raft`` / ``musique_rows`` record them), one batched call."""
    from expertrag.chains.naive import EvidenceGate
    from expertrag.types import Document

    for i, r in enumerate(rows):
        meta = r.get("meta") or {}
        if not isinstance(meta.get("question"), str) or not isinstance(meta.get("passages"),
                                                                        list):
            raise InputError(f"row {i} has no meta 'question' / 'passages' to score")
    gate = EvidenceGate(scorer, 0.5)
    return gate.scores([r["meta"]["question"] for r in rows],
                       [[Document(text=t) for t in r["meta"]["passages"]] for r in rows])


def pick_evidence_threshold(best_scores: Sequence[float], refuse: Sequence[bool],
                            max_false_refusals: float | None = None,
                            groups: Sequence[str] | None = None,
                            refused_anyway: Sequence[bool] | None = None) -> dict[str, Any]:
    """The evidence gate's relevance floor: :func:`pick_threshold` on 1 - the best passage's
    P(relevant) (a row is refused when its best passage scores below the floor).
    ``refused_anyway`` marks rows refused past the gate too (the expert's own refusal gate),
    so the floor is chosen for the two together; ``groups`` as in :func:`pick_threshold`."""
    anyway = list(refused_anyway) if refused_anyway is not None else [False] * len(best_scores)
    if len(anyway) != len(best_scores):
        raise InputError("refused_anyway must have one entry per row")
    probs = [1.0 if a else 1.0 - float(s) for s, a in zip(best_scores, anyway, strict=True)]
    result = pick_threshold(probs, refuse, max_false_refusals, groups=groups)
    result["threshold"] = round(1.0 - result.pop("threshold"), 4)
    result.pop("at_0.5", None)
    return result


def record_decoding(folder: str | os.PathLike[str], num_beams: int, evidence: str = "") -> None:
    """Write the expert's decoding setting into its metadata and model card (atomic rewrite):
    ``ExpertLLM.generate`` beams this wide for the expert's plain greedy calls."""
    if check_num_beams(num_beams) is None:
        raise InputError("num_beams must be an int, got None")
    _record(folder, "decoding", {"num_beams": num_beams}, "Decoding", (
        f"`ExpertLLM.generate` answers with this expert by beam search, {num_beams} beams, "
        "length-normalised scores (greedy when `num_beams` is 1; sampling, grammars and "
        "log-probabilities keep their own decoding; `num_beams=1` in a call turns it off). "
        "The prompt is prefilled once and shared by the beams. In-process only: the "
        f"multi-LoRA server client decodes greedily.{' ' + evidence if evidence else ''}"))


def record_evidence_gate(folder: str | os.PathLike[str], scorer_expert: str,
                         threshold: float, calibration: dict[str, Any],
                         refusal_threshold: float | None = 1.0) -> None:
    """Write the evidence gate into the expert's metadata and model card (atomic rewrite);
    ``RAGPipeline(evidence_gate="auto")`` applies it to the expert's answers."""
    at = calibration["at_threshold"]
    then = ("then answers with its own refusal barred" if refusal_threshold == 1.0 else
            "then answers under its own refusal gate" if refusal_threshold is None else
            f"then answers with its refusal gate at {refusal_threshold}")
    _record(folder, EVIDENCE_GATE_KEY, {"expert": scorer_expert, "threshold": threshold,
                                        "refusal_threshold": refusal_threshold,
                                        "calibration": calibration}, "Evidence gate", (
        "With `RAGPipeline(evidence_gate=\"auto\")` (`expertrag ask --evidence-gate`) the "
        f"pipeline refuses (`{REFUSAL}`) without generating when no passage gets "
        f"P(relevant) >= {threshold:.3f} from the `{scorer_expert}` expert (one batched "
        f"forward pass per passage), and the expert {then}. Calibrated on "
        f"{calibration['rows']} held-out rows ({calibration['refusal_rows']} without the "
        f"answer; {calibration.get('source', 'see metadata')}): AUC "
        f"{calibration['auc']:.3f} (the expert's own P(refusal): "
        f"{calibration.get('own_gate_auc', float('nan')):.3f}), refusal accuracy "
        f"{at['refusal_accuracy']:.3f}, false refusals {at['false_refusal_rate']:.3f}."),
        tag=" (opt-in)")
