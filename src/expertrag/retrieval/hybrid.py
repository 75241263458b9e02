"""Hybrid first stage: BM25 + dense retrieval, fused by reciprocal rank fusion.

Keywords catch exact names and rare terms, embeddings catch paraphrases; RRF merges the two
rankings without calibrating their scores. The dense side is either an in-memory matrix over
the same documents (embedded once, lazily) or the project's Chroma :class:`VectorStore`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from expertrag.errors import InputError
from expertrag.retrieval.bm25 import BM25Retriever
from expertrag.retrieval.store import content_id
from expertrag.types import Document


def _unit_rows(m: Any) -> Any:
    """Rows scaled to unit length (zero rows left as they are), for cosine by dot product."""
    import numpy as np

    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms == 0, 1.0, norms)


class DenseIndex:
    """Exact cosine search over documents embedded once (fine up to ~1e5 passages)."""

    def __init__(self, documents: Sequence[Document], embedder: Any,
                 vectors: Any = None) -> None:
        self.documents = list(documents)
        self.embedder = embedder
        self._matrix: Any = None
        self._lock = threading.Lock()
        if vectors is not None:  # embedded already (a store's copy): don't embed again
            import numpy as np

            m = np.asarray(vectors, dtype=np.float32)
            if m.ndim != 2 or m.shape[0] != len(self.documents):
                raise InputError(f"vectors must hold one row per document ({len(self.documents)}"
                                 f"), got shape {m.shape}")
            self._matrix = _unit_rows(m)

    @property
    def matrix(self) -> Any:
        import numpy as np

        if self._matrix is None:
            with self._lock:
                if self._matrix is None:
                    vecs = self.embedder.embed_documents([d.text for d in self.documents])
                    self._matrix = _unit_rows(
                        np.asarray(vecs, dtype=np.float32).reshape(len(self.documents), -1))
        return self._matrix

    def query(self, text: str, k: int) -> list[Document]:
        import numpy as np

        if not self.documents:
            return []
        q = np.asarray(self.embedder.embed_query(text), dtype=np.float32)
        q = q / (np.linalg.norm(q) or 1.0)
        sims = self.matrix @ q
        top = np.argsort(-sims, kind="stable")[:k]
        return [replace(self.documents[i], score=float(sims[i])) for i in top.tolist()]


class HybridRetriever:
    """BM25 and dense retrieval fused by RRF; ``retrieve(query, k)`` returns scored copies.

    Pass ``documents`` (dense side in memory, embedded with ``embedder``), or a ``store``
    (:class:`~expertrag.retrieval.VectorStore`; its documents feed BM25 unless ``documents``
    are given too). Documents without an id get the store's content hash, so both sides
    agree on identity. ``metadata`` carries ``bm25_rank`` / ``dense_rank`` (None if absent).
    ``vectors`` (one row per document, same embedder) skips embedding documents that were
    embedded already, e.g. a graph's stored passage embeddings.
    """

    def __init__(
        self,
        documents: Sequence[Document | str] | None = None,
        *,
        store: Any = None,
        embedder: Any = None,
        k: int = 10,
        bm25_k: int = 100,
        dense_k: int = 100,
        rrf_k: int = 60,
        weights: tuple[float, float] = (1.0, 1.0),
        stemmer: str | Callable[[str], str] | None = "auto",
        k1: float = 1.5,
        b: float = 0.75,
        vectors: Any = None,
    ) -> None:
        if documents is None and store is None:
            raise InputError("HybridRetriever needs documents or a store")
        if vectors is not None and store is not None:
            raise InputError("vectors are for documents held in memory; a store keeps its own")
        for name, value in (("k", k), ("bm25_k", bm25_k), ("dense_k", dense_k)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if documents is None:
            documents = store.get(store.ids())
        self.documents = [_as_document(d, i) for i, d in enumerate(documents)]
        self.store = store
        if store is None and embedder is None:
            from expertrag.embeddings import Embedder

            embedder = Embedder()
        self.embedder = embedder if embedder is not None else store.embedder
        self.k, self.bm25_k, self.dense_k, self.rrf_k = k, bm25_k, dense_k, rrf_k
        self.weights = tuple(weights)
        self.bm25 = BM25Retriever(self.documents, k1=k1, b=b, stemmer=stemmer)
        self.dense = DenseIndex(self.documents, self.embedder, vectors) \
            if store is None else None

    def dense_retrieve(self, query: str, k: int) -> list[Document]:
        if self.dense is not None:
            return self.dense.query(query, k)
        return self.store.query(query, k=k)

    def retrieve(self, query: str, k: int | None = None) -> list[Document]:
        """Top-`k` (default ``self.k``) fused documents, best first; score = RRF score."""
        from expertrag.rerank.fusion import reciprocal_rank_fusion

        if not isinstance(query, str) or not query.strip():
            raise InputError("query must be a non-empty string")
        k = self.k if k is None else k
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        sparse = self.bm25.retrieve(query, self.bm25_k)
        dense = self.dense_retrieve(query, self.dense_k)
        ranks = [{d.id: r for r, d in enumerate(lst, 1)} for lst in (sparse, dense)]
        fused = reciprocal_rank_fusion([sparse, dense], k=self.rrf_k, weights=self.weights)
        out = []
        for doc in fused[:k]:
            meta = {key: v for key, v in doc.metadata.items() if key != "bm25_score"}
            meta.update(bm25_rank=ranks[0].get(doc.id), dense_rank=ranks[1].get(doc.id))
            out.append(replace(doc, metadata=meta))
        return out

    async def aretrieve(self, query: str, k: int | None = None) -> list[Document]:
        """Async :meth:`retrieve` (runs in a thread)."""
        return await asyncio.to_thread(self.retrieve, query, k)

    def __len__(self) -> int:
        return len(self.documents)


def _as_document(doc: Document | str, i: int) -> Document:
    if isinstance(doc, str):
        doc = Document(text=doc)
    if not isinstance(doc, Document) or not isinstance(doc.text, str):
        raise InputError(f"documents[{i}] must be a Document or a string")
    if doc.id is None:
        doc = replace(doc, id=content_id(doc.text, doc.metadata))
    return doc
