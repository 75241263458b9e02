"""The four RGB abilities (Chen et al. 2024) as test conditions built from any QA set with
gold and distractor passages (:class:`~expertrag.evaluation.datasets.QAItem`).

Each condition is a list of :class:`Case`: a question, the exact passages a pipeline
retrieves for it, and what a right answer looks like.

- **plain**: every gold passage plus distractors up to five passages (the usual setting).
- **noise robustness** at noise ratios 0, 0.2, 0.4, 0.6, 0.8: every gold passage plus as many
  distractors as make that share of the passages noise.
- **negative rejection**: distractors only; the right answer is a refusal.
- **counterfactual robustness**: the gold passages with the answer replaced by another
  item's answer; a pipeline that *follows* says the false answer, one that *notices* refuses
  or keeps the true answer.
- **information integration**: questions whose answer needs two gold passages, with both
  given (plus noise 0.4), against each gold passage alone (where the answer is incomplete).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from expertrag.errors import InputError
from expertrag.evaluation.datasets import QAItem
from expertrag.types import Document

NOISE_RATIOS: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
ABILITIES = ("plain", "noise", "negative", "counterfactual", "integration")


@dataclass
class Case:
    """One question under one condition: the passages a pipeline sees and the truth."""

    key: str
    condition: str
    item: QAItem
    passages: list[Document]
    answerable: bool = True
    counterfactual: str | None = None
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def question(self) -> str:
        return self.item.question


def _noise_count(gold: int, ratio: float) -> int:
    return 0 if ratio <= 0 else round(ratio / (1 - ratio) * gold)


def plain_cases(items: Sequence[QAItem], n: int = 5, seed: int = 0) -> list[Case]:
    """The standard condition: every gold passage, then distractors up to ``n`` passages."""
    out = []
    for item in items:
        rng = random.Random(f"{seed}-plain-{item.id}")
        room = max(0, n - len(item.gold))
        passages = list(item.gold) + rng.sample(item.distractors,
                                                min(room, len(item.distractors)))
        rng.shuffle(passages)
        out.append(Case(f"plain:{item.id}", "plain", item, passages,
                        answerable=bool(item.gold)))
    return out


def noise_cases(items: Sequence[QAItem], ratios: Sequence[float] = NOISE_RATIOS,
                seed: int = 0) -> list[Case]:
    """Gold passages plus distractors at each noise ratio (items with too few distractors
    for a ratio are left out of that ratio), shuffled by the seed."""
    out = []
    for ratio in ratios:
        if not 0.0 <= ratio < 1.0:
            raise InputError(f"noise ratios must be within [0, 1), got {ratio!r}")
        for item in items:
            need = _noise_count(len(item.gold), ratio)
            if not item.gold or need > len(item.distractors):
                continue
            rng = random.Random(f"{seed}-noise-{ratio}-{item.id}")
            passages = list(item.gold) + rng.sample(item.distractors, need)
            rng.shuffle(passages)
            out.append(Case(f"noise{ratio:.1f}:{item.id}", f"noise {ratio:.1f}", item,
                            passages, meta={"ratio": ratio}))
    return out


def negative_cases(items: Sequence[QAItem], n: int = 5, seed: int = 0) -> list[Case]:
    """Only distractors (up to ``n``): the answer is not there; a refusal is right."""
    out = []
    for item in items:
        if not item.distractors:
            continue
        rng = random.Random(f"{seed}-negative-{item.id}")
        passages = rng.sample(item.distractors, min(n, len(item.distractors)))
        out.append(Case(f"negative:{item.id}", "negative rejection", item, passages,
                        answerable=False))
    return out


def _replace_answer(text: str, answer: str, other: str) -> str:
    return re.sub(re.escape(answer), other, text, flags=re.IGNORECASE)


def counterfactual_cases(items: Sequence[QAItem], seed: int = 0) -> list[Case]:
    """The gold passages with every mention of the answer replaced by another item's answer
    (items whose answer is yes/no or never appears verbatim are left out)."""
    answers = [it.answer for it in items]
    out = []
    for i, item in enumerate(items):
        if item.answer.lower() in ("yes", "no"):
            continue
        if not any(item.answer.lower() in d.text.lower() for d in item.gold):
            continue
        rng = random.Random(f"{seed}-counterfactual-{item.id}")
        others = [a for j, a in enumerate(answers) if j != i and a.lower() not in (
            "yes", "no") and a.lower() not in item.answer.lower()
            and item.answer.lower() not in a.lower()]
        if not others:
            continue
        fake = rng.choice(others)
        gold = [replace(d, text=_replace_answer(d.text, item.answer, fake),
                        metadata={**d.metadata, "counterfactual": True}) for d in item.gold]
        out.append(Case(f"counterfactual:{item.id}", "counterfactual", item, gold,
                        counterfactual=fake))
    return out


def integration_cases(items: Sequence[QAItem], seed: int = 0) -> list[Case]:
    """Two-passage questions: both gold passages (plus noise 0.4) as "integration", and
    each gold passage alone as "single passage" (the other hop missing)."""
    out = []
    for item in items:
        if len(item.gold) != 2:
            continue
        rng = random.Random(f"{seed}-integration-{item.id}")
        need = min(_noise_count(2, 0.4), len(item.distractors))
        both = list(item.gold) + rng.sample(item.distractors, need)
        rng.shuffle(both)
        out.append(Case(f"integration:{item.id}", "integration", item, both))
        for n, gold in enumerate(item.gold):
            out.append(Case(f"single{n}:{item.id}", "single passage", item, [gold],
                            meta={"hop": n}))
    return out


def robustness_cases(items: Sequence[QAItem], abilities: Sequence[str] = ABILITIES,
                     seed: int = 0) -> list[Case]:
    """Every case of the chosen abilities for ``items``."""
    unknown = set(abilities) - set(ABILITIES)
    if unknown:
        raise InputError(f"unknown abilities {sorted(unknown)}; choose from {ABILITIES}")
    builders = {"plain": plain_cases, "noise": noise_cases, "negative": negative_cases,
                "counterfactual": counterfactual_cases, "integration": integration_cases}
    return [c for a in abilities for c in builders[a](items, seed=seed)]
