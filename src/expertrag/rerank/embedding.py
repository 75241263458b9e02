"""Embedding reranker: cosine similarity with the project's embedder (no extra model)."""

from __future__ import annotations

from typing import Any

from expertrag.rerank.base import Reranker, check_query


def cosine_scores(query_vector: Any, vectors: Any) -> list[float]:
    """Cosine similarity of one vector with each row (zero vectors score 0)."""
    import numpy as np

    q = np.asarray(query_vector, dtype=np.float32)
    m = np.asarray(vectors, dtype=np.float32).reshape(-1, q.shape[-1])
    norms = np.linalg.norm(m, axis=1) * (np.linalg.norm(q) or 1.0)
    norms[norms == 0] = 1.0
    return (m @ q / norms).astype(float).tolist()


class EmbeddingReranker(Reranker):
    """Ranks by cosine(query, passage) with an :class:`~expertrag.embeddings.Embedder`
    (default: the embedded all-MiniLM-L6-v2, loaded on first use)."""

    name = "embedding"

    def __init__(self, embedder: Any = None) -> None:
        if embedder is None:
            from expertrag.embeddings import Embedder

            embedder = Embedder()
        self.embedder = embedder

    def score(self, query: str, texts: list[str]) -> list[float]:
        check_query(query)
        if not texts:
            return []
        return cosine_scores(self.embedder.embed_query(query),
                             self.embedder.embed_documents(list(texts)))
