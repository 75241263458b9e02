"""Reciprocal rank fusion (Cormack et al., 2009): merge rankings without comparable scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from expertrag.errors import InputError
from expertrag.types import Document

RRF_SCORE = "rrf_score"


def doc_key(doc: Document) -> str:
    """Identity used to merge duplicates: the id, else the text."""
    return f"id:{doc.id}" if doc.id is not None else f"text:{doc.text}"


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[Document]],
    k: int = 60,
    weights: Sequence[float] | None = None,
) -> list[Document]:
    """Fuse best-first rankings: score(d) = sum_i w_i / (k + rank_i(d)), ranks from 1.

    Documents are merged by id (else text); the first occurrence supplies text and metadata.
    Results are copies with ``score`` and ``metadata["rrf_score"]``, best first; ties keep
    first-seen order.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or k < 0:
        raise InputError(f"k must be a non-negative number, got {k!r}")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise InputError(f"got {len(weights)} weights for {len(rankings)} rankings")
    first: dict[str, Document] = {}
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        seen: set[str] = set()
        for rank, doc in enumerate(ranking, start=1):
            key = doc_key(doc)
            if key in seen:  # a duplicate inside one ranking counts once (its best rank)
                continue
            seen.add(key)
            first.setdefault(key, doc)
            fused[key] = fused.get(key, 0.0) + float(weight) / (k + rank)
    order = sorted(fused, key=lambda key: fused[key], reverse=True)  # stable: first-seen order
    return [
        replace(first[key], score=fused[key],
                metadata={**(first[key].metadata or {}), RRF_SCORE: fused[key]})
        for key in order
    ]
