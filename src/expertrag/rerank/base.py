"""The reranker protocol: score (query, text) pairs, then rank documents by those scores.

Every backend implements one method, :meth:`Reranker.score`; ranking, ``top_n``, the score
threshold, stable ordering on ties and input checks live here once, so every backend and both
framework skins behave the same.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import replace

from expertrag.errors import InputError
from expertrag.types import Document

RERANK_SCORE = "rerank_score"
RETRIEVAL_SCORE = "retrieval_score"


def check_documents(documents: Sequence[Document]) -> list[Document]:
    """Validate a document list; a document without text is an error that names it."""
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise InputError(f"documents must be a list of Document, got {type(documents).__name__}")
    docs = list(documents)
    for i, doc in enumerate(docs):
        if not isinstance(doc, Document):
            raise InputError(f"documents[{i}] must be a Document, got {type(doc).__name__}")
        if not isinstance(doc.text, str) or not doc.text.strip():
            name = f"documents[{i}]" + (f" (id {doc.id!r})" if doc.id is not None else "")
            raise InputError(f"{name} has no text: got {doc.text!r:.40}")
    return docs


def check_query(query: str) -> str:
    if not isinstance(query, str):
        raise InputError(f"query must be a string, got {type(query).__name__}")
    return query


def _check_top_n(top_n: int | None) -> None:
    if top_n is not None and (not isinstance(top_n, int) or isinstance(top_n, bool) or top_n < 1):
        raise InputError(f"top_n must be a positive integer or None, got {top_n!r}")


def _rerank_args(query: str, documents: Sequence[Document],
                 top_n: int | None) -> tuple[str, list[Document]]:
    """The checked query and documents of a ``rerank`` call (``top_n`` checked too)."""
    query = check_query(query)
    _check_top_n(top_n)
    return query, check_documents(documents)


def rank_by_scores(
    documents: list[Document],
    scores: Sequence[float],
    top_n: int | None = None,
    threshold: float | None = None,
    key: str = RERANK_SCORE,
) -> list[Document]:
    """Copies of `documents` with ``score`` and ``metadata[key]`` set, best first.

    The sort is stable (ties keep their input order) and NaN sorts last. A previous score is
    kept as ``metadata["retrieval_score"]``. ``threshold`` keeps scores >= it; ``top_n`` cuts.
    """
    _check_top_n(top_n)
    if len(scores) != len(documents):
        raise InputError(f"got {len(scores)} scores for {len(documents)} documents")
    values = [float(s) for s in scores]
    order = sorted(
        range(len(values)),
        key=lambda i: -math.inf if math.isnan(values[i]) else values[i],
        reverse=True,
    )
    # sorted(reverse=True) keeps equal keys in input order, so ties stay stable
    out: list[Document] = []
    for i in order:
        if threshold is not None and not values[i] >= threshold:
            continue
        doc = documents[i]
        meta = dict(doc.metadata or {})
        if doc.score is not None and RETRIEVAL_SCORE not in meta:
            meta[RETRIEVAL_SCORE] = doc.score
        meta[key] = values[i]
        out.append(replace(doc, score=values[i], metadata=meta))
        if top_n is not None and len(out) >= top_n:
            break
    return out


class Reranker(ABC):
    """Scores how relevant each text is to a query; higher is more relevant.

    Subclasses implement :meth:`score` (and may override :meth:`ascore` to await their own
    model worker). :meth:`rerank` / :meth:`arerank` rank :class:`Document` lists.
    """

    name: str = "reranker"

    @abstractmethod
    def score(self, query: str, texts: list[str]) -> list[float]:
        """One relevance score per text, in input order."""

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        """Async :meth:`score`; by default runs it in a thread so the loop stays free."""
        return await asyncio.to_thread(self.score, query, texts)

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One score per (query, text) pair, queries mixed: what a chain answering several
        questions at once needs. By default one :meth:`score` call per distinct query;
        backends that can batch across queries override it."""
        by_query: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            by_query.setdefault(check_query(query), []).append(i)
        out = [0.0] * len(pairs)
        for query, rows in by_query.items():
            for i, s in zip(rows, self.score(query, [pairs[i][1] for i in rows]), strict=True):
                out[i] = float(s)
        return out

    def rerank(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: int | None = None,
        threshold: float | None = None,
    ) -> list[Document]:
        """Documents sorted by relevance (copies with ``score`` and
        ``metadata["rerank_score"]`` set), ties stable, cut to ``top_n`` and ``threshold``."""
        query, docs = _rerank_args(query, documents, top_n)
        if not docs:
            return []
        return rank_by_scores(docs, self.score(query, [d.text for d in docs]), top_n, threshold)

    async def arerank(
        self,
        query: str,
        documents: Sequence[Document],
        top_n: int | None = None,
        threshold: float | None = None,
    ) -> list[Document]:
        """Async :meth:`rerank`: the model runs off the event loop."""
        query, docs = _rerank_args(query, documents, top_n)
        if not docs:
            return []
        scores = await self.ascore(query, [d.text for d in docs])
        return rank_by_scores(docs, scores, top_n, threshold)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
