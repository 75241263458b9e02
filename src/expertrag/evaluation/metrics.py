"""Answer and retrieval metrics without a model.

Answer metrics follow the SQuAD evaluation script: answers are normalised (lower case, no
punctuation, no articles, single spaces) before exact match, token F1 or containment; with
several gold answers the best one counts. Retrieval metrics take a ranked list of ids and the
set (or graded dict) of relevant ids, as TREC tools do; ``tests/unit/test_evaluation.py``
checks them against ``ir-measures`` (pytrec_eval) when it is installed.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, punctuation and articles removed, spaces collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _golds(gold: str | Iterable[str]) -> list[str]:
    return [gold] if isinstance(gold, str) else [g for g in gold if g and g.strip()]


def exact_match(prediction: str, gold: str | Iterable[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(g) for g in _golds(gold)))


def token_f1(prediction: str, gold: str | Iterable[str]) -> float:
    """SQuAD token F1 after normalisation, the best over the gold answers."""
    best = 0.0
    pred = normalize_answer(prediction).split()
    for g in _golds(gold):
        ref = normalize_answer(g).split()
        common = sum((Counter(pred) & Counter(ref)).values())
        if not pred or not ref or common == 0:
            best = max(best, float(pred == ref))
            continue
        precision, recall = common / len(pred), common / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def contains(prediction: str, gold: str | Iterable[str]) -> float:
    """1.0 when a normalised gold answer occurs in the normalised prediction."""
    pred = normalize_answer(prediction)
    return float(any(normalize_answer(g) and normalize_answer(g) in pred
                     for g in _golds(gold)))


def holds_answer(text: str, gold: str | Iterable[str]) -> bool:
    """Whether a normalised gold answer occurs in ``text`` as whole words (``Paris`` is in
    "It is in Paris, France." but not in "Parisian cafés"): does a passage hold the answer."""
    flat = f" {normalize_answer(text)} "
    return any(normalize_answer(g) and f" {normalize_answer(g)} " in flat for g in _golds(gold))


def is_yes_no(gold: str | Iterable[str]) -> bool:
    """Whether every gold answer is yes or no (no passage spells those out)."""
    golds = _golds(gold)
    return bool(golds) and {normalize_answer(g) for g in golds} <= {"yes", "no"}


def _relevance(relevant: Iterable[str] | Mapping[str, float]) -> dict[str, float]:
    if isinstance(relevant, Mapping):
        return {str(k): float(v) for k, v in relevant.items() if float(v) > 0}
    return {str(k): 1.0 for k in relevant}


def hit_at_k(ranked: Sequence[str], relevant: Iterable[str] | Mapping[str, float],
             k: int) -> float:
    """1.0 when a relevant id is among the first ``k``."""
    rel = _relevance(relevant)
    return float(any(str(d) in rel for d in ranked[:k]))


def recall_at_k(ranked: Sequence[str], relevant: Iterable[str] | Mapping[str, float],
                k: int) -> float:
    """Share of the relevant ids found among the first ``k`` (nan without relevant ids)."""
    rel = _relevance(relevant)
    if not rel:
        return float("nan")
    return len({str(d) for d in ranked[:k]} & set(rel)) / len(rel)


def mrr(ranked: Sequence[str], relevant: Iterable[str] | Mapping[str, float],
        k: int | None = None) -> float:
    """Reciprocal rank of the first relevant id (within the first ``k``), 0 when none."""
    rel = _relevance(relevant)
    for rank, d in enumerate(ranked[:k] if k else ranked, start=1):
        if str(d) in rel:
            return 1.0 / rank
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant: Iterable[str] | Mapping[str, float],
              k: int) -> float:
    """nDCG@k with linear gains (the grade itself), as trec_eval's ``ndcg_cut``."""
    rel = _relevance(relevant)
    if not rel:
        return float("nan")
    dcg = sum(rel.get(str(d), 0.0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted(rel.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def mean(values: Iterable[float]) -> float:
    """The mean of the finite values (nan when there are none)."""
    vals = [v for v in values if v == v]
    return sum(vals) / len(vals) if vals else float("nan")
