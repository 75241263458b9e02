"""Post-processing of a ranked list: diversity (MMR) and "lost in the middle" ordering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, TypeVar

from expertrag.errors import InputError
from expertrag.types import Document

T = TypeVar("T")


def mmr_indices(query_embedding: Any, doc_embeddings: Any, k: int,
                lambda_mult: float = 0.5) -> list[int]:
    """Maximal marginal relevance (Carbonell & Goldstein, 1998) over cosine similarity.

    Picks the most query-similar item first, then repeatedly the item maximising
    ``lambda * sim(q, d) - (1 - lambda) * max sim(d, selected)``. Ties go to the earlier item.
    """
    import numpy as np

    if not 0.0 <= lambda_mult <= 1.0:
        raise InputError(f"lambda_mult must be in [0, 1], got {lambda_mult!r}")
    docs = np.asarray(doc_embeddings, dtype=np.float64)
    if docs.size == 0 or k < 1:
        return []
    q = np.asarray(query_embedding, dtype=np.float64).reshape(-1)
    docs = docs.reshape(-1, q.shape[0])

    def normed(m: Any) -> Any:
        n = np.linalg.norm(m, axis=-1, keepdims=True)
        return m / np.where(n == 0, 1.0, n)

    docs_n = normed(docs)
    to_query = docs_n @ normed(q)
    between = docs_n @ docs_n.T
    selected = [int(np.argmax(to_query))]
    while len(selected) < min(k, len(docs)):
        redundancy = between[:, selected].max(axis=1)
        value = lambda_mult * to_query - (1.0 - lambda_mult) * redundancy
        value[selected] = -np.inf
        selected.append(int(np.argmax(value)))
    return selected


def mmr(query_embedding: Any, doc_embeddings: Any, documents: Sequence[Document], k: int,
        lambda_mult: float = 0.5) -> list[Document]:
    """The `k` documents chosen by :func:`mmr_indices`, in selection order; each copy keeps
    its query similarity in ``metadata["mmr_query_similarity"]``."""
    import numpy as np

    if len(documents) != len(doc_embeddings):
        raise InputError(f"got {len(doc_embeddings)} embeddings for {len(documents)} documents")
    picked = mmr_indices(query_embedding, doc_embeddings, k, lambda_mult)
    if not picked:
        return []
    q = np.asarray(query_embedding, dtype=np.float64).reshape(-1)
    out = []
    for i in picked:
        d = np.asarray(doc_embeddings[i], dtype=np.float64)
        sim = float(d @ q / ((np.linalg.norm(d) * np.linalg.norm(q)) or 1.0))
        doc = documents[i]
        out.append(replace(doc, metadata={**(doc.metadata or {}), "mmr_query_similarity": sim}))
    return out


def lost_in_the_middle_reorder(documents: Sequence[T]) -> list[T]:
    """Reorder a best-first list so the strongest items sit at both ends and the weakest in
    the middle (Liu et al., 2023, "Lost in the Middle").

    Same order as LangChain's ``LongContextReorder``: for best-first ``[1, 2, 3, 4, 5]`` it
    gives ``[1, 3, 5, 4, 2]`` (best first, second best last); for an even length the two
    swap ends: ``[1, 2, 3, 4]`` gives ``[2, 4, 3, 1]``.
    """
    items = list(documents)
    items.reverse()
    out: list[T] = []
    for i, item in enumerate(items):
        if i % 2 == 1:
            out.append(item)
        else:
            out.insert(0, item)
    return out
