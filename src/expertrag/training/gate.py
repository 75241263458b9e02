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
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from expertrag.errors import InputError
from expertrag.rag import REFUSAL


def refusal_probabilities(llm: Any, rows: Sequence[dict[str, Any]], expert: str | None,
                          batch_size: int = 8) -> list[float]:
    """P(first token of the refusal) for each row's prompt, over the whole vocabulary."""
    first = llm.tokenizer(REFUSAL, add_special_tokens=False)["input_ids"][0]
    label = llm.tokenizer.decode([first])
    probs = llm.label_probabilities([r["messages"] for r in rows], labels=(label,),
                                    expert=expert, batch_size=batch_size, normalize=False)
    return [p[label] for p in probs]


def pick_threshold(probabilities: Sequence[float], refuse: Sequence[bool]) -> dict[str, Any]:
    """The threshold of best balanced accuracy (ties: the highest, so that the expert
    answers rather than refuses) and the figures it gives, with 0.5 for comparison."""
    from expertrag.training.trainer import roc_auc

    pairs = sorted(zip((float(p) for p in probabilities), (bool(r) for r in refuse),
                       strict=True))
    pos = sum(r for _, r in pairs)
    neg = len(pairs) - pos
    if not pos or not neg:
        raise InputError("calibrating a refusal gate needs rows of both kinds")

    def figures(t: float) -> dict[str, float]:
        refused_ok = sum(p >= t for p, r in pairs if r) / pos
        false_ref = sum(p >= t for p, r in pairs if not r) / neg
        return {"refusal_accuracy": refused_ok, "false_refusal_rate": false_ref,
                "balanced_accuracy": 0.5 * (refused_ok + 1 - false_ref)}

    values = sorted({p for p, _ in pairs})
    cuts = [0.0, *[(a + b) / 2 for a, b in itertools.pairwise(values)], 1.0]
    scored = [(figures(t)["balanced_accuracy"], t) for t in cuts]
    best = max(b for b, _ in scored)
    threshold = max(t for b, t in scored if b == best)
    return {"threshold": round(threshold, 4), "at_threshold": figures(threshold),
            "at_0.5": figures(0.5), "auc": roc_auc([p for p, _ in pairs],
                                                   [int(r) for _, r in pairs]),
            "rows": len(pairs), "refusal_rows": pos}


def record_gate(folder: str | os.PathLike[str], threshold: float,
                calibration: dict[str, Any]) -> None:
    """Write the gate into the expert's metadata and model card (atomic rewrite)."""
    from expertrag.models.llm import EXPERT_METADATA

    folder = Path(folder)
    meta_path = folder / EXPERT_METADATA
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta["refusal_gate"] = {"text": REFUSAL, "threshold": threshold,
                            "calibration": calibration}
    tmp = meta_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=2), encoding="utf-8")
    os.replace(tmp, meta_path)
    card = folder / "README.md"
    if card.is_file():
        at = calibration["at_threshold"]
        card.write_text(card.read_text(encoding="utf-8").rstrip("\n") + (
            f"\n\n## Refusal gate\n\nThe expert refuses only when P(its answer starts with "
            f"`{REFUSAL}`) >= {threshold:.3f}, read from the first decoding step "
            "(`ExpertLLM.generate` applies it; `refusal_gate=False` turns it off). Calibrated "
            f"on {calibration['rows']} held-out rows ({calibration['refusal_rows']} without "
            f"the answer; {calibration.get('source', 'see metadata')}): AUC "
            f"{calibration['auc']:.3f}, refusal accuracy {at['refusal_accuracy']:.3f}, false "
            f"refusals {at['false_refusal_rate']:.3f} (greedy argmax-like 0.5: "
            f"{calibration['at_0.5']['refusal_accuracy']:.3f} / "
            f"{calibration['at_0.5']['false_refusal_rate']:.3f}).\n"), encoding="utf-8")


def calibrate_gate(llm: Any, expert: str, rows: Sequence[dict[str, Any]],
                   folder: str | os.PathLike[str] | None = None,
                   source: str = "") -> dict[str, Any]:
    """Pick the threshold for ``expert`` on ``rows`` (grounded rows whose ``answer`` is the
    refusal or not) and, with ``folder``, record it there."""
    probs = refusal_probabilities(llm, rows, expert)
    result = pick_threshold(probs, [r["answer"] == REFUSAL for r in rows])
    result["source"] = source
    if folder is not None:
        record_gate(folder, result["threshold"], result)
    return result
