"""Paired comparisons of two systems on the same questions: is a difference real?

Two systems answered the same questions, so their per-question scores are paired. The
paired bootstrap resamples questions (both systems' scores move together) and gives a 95%
interval for the difference of the means; McNemar's exact test asks whether the questions
only one of them gets right split evenly. A difference counts as a win or a loss only when
its interval excludes 0; otherwise it is a tie. Both come from SciPy (``expertrag[eval]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from expertrag.errors import InputError

WIN, LOSS, TIE = "win", "loss", "tie"


@dataclass(frozen=True)
class Comparison:
    """System A against system B on the same ``n`` questions (A minus B)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    low: float
    high: float
    #: McNemar's exact two-sided p for binary scores, None for graded ones (F1)
    p_mcnemar: float | None
    #: questions only A got right / only B got right (binary scores)
    only_a: int | None = None
    only_b: int | None = None

    @property
    def verdict(self) -> str:
        """``win`` / ``loss`` when the interval excludes 0, else ``tie``."""
        if self.low > 0:
            return WIN
        if self.high < 0:
            return LOSS
        return TIE

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def _scores(values: Sequence[float | bool], name: str) -> Any:
    import numpy as np

    array = np.asarray([float(v) for v in values], dtype=float)
    if array.ndim != 1 or not len(array):
        raise InputError(f"{name} must be a non-empty sequence of per-question scores")
    if not np.isfinite(array).all():
        raise InputError(f"{name} holds a NaN or infinite score")
    return array


def _scipy_stats() -> Any:
    try:
        from scipy import stats
    except ImportError as exc:  # pragma: no cover - scipy ships with expertrag[eval]
        raise ImportError("paired comparisons need SciPy: pip install 'expertrag[eval]'") from exc
    return stats


def mcnemar(a: Sequence[bool], b: Sequence[bool]) -> tuple[float, int, int]:
    """McNemar's exact test on paired binary outcomes: (two-sided p, only-A, only-B)."""
    if len(a) != len(b):
        raise InputError(f"paired outcomes differ in length: {len(a)} vs {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    if only_a + only_b == 0:
        return 1.0, 0, 0
    p = _scipy_stats().binomtest(only_a, only_a + only_b, 0.5).pvalue
    return float(min(1.0, p)), only_a, only_b


def paired_bootstrap(a: Sequence[float | bool], b: Sequence[float | bool], *,
                     n_resamples: int = 10_000, confidence: float = 0.95,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): the percentile bootstrap interval of the difference,
    resampling questions with both systems' scores kept together."""
    import numpy as np

    x, y = _scores(a, "a"), _scores(b, "b")
    if len(x) != len(y):
        raise InputError(f"paired scores differ in length: {len(x)} vs {len(y)}")
    if not 0 < confidence < 1:
        raise InputError(f"confidence must be within (0, 1), got {confidence!r}")
    diff = float(x.mean() - y.mean())
    if len(x) == 1:
        return diff, diff, diff
    result = _scipy_stats().bootstrap(
        (x, y), lambda u, v, axis: u.mean(axis) - v.mean(axis), paired=True,
        vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return diff, float(low), float(high)


def compare(a: Sequence[float | bool], b: Sequence[float | bool], *, binary: bool | None = None,
            n_resamples: int = 10_000, seed: int = 0) -> Comparison:
    """System A vs system B on the same questions: the bootstrap interval of the difference
    and, for binary scores (auto-detected unless ``binary`` is given), McNemar's p."""
    x, y = _scores(a, "a"), _scores(b, "b")
    diff, low, high = paired_bootstrap(x, y, n_resamples=n_resamples, seed=seed)
    if binary is None:
        binary = bool(((x == 0) | (x == 1)).all() and ((y == 0) | (y == 1)).all())
    p = only_a = only_b = None
    if binary:
        p, only_a, only_b = mcnemar([bool(v) for v in x], [bool(v) for v in y])
    return Comparison(n=len(x), mean_a=float(x.mean()), mean_b=float(y.mean()), diff=diff,
                      low=low, high=high, p_mcnemar=p, only_a=only_a, only_b=only_b)
