"""Vector stores and retrievers over expertrag's Chroma layout.

:func:`chroma_vectorstore` opens the same Chroma collection that :class:`expertrag.retrieval.
VectorStore` (and ``expertrag ingest``) writes, as a ``langchain_chroma.Chroma`` (needs
``pip install langchain-chroma``). :class:`ExpertChromaRetriever` needs nothing beyond
langchain-core: a ``BaseRetriever`` over a core ``VectorStore``, scores in metadata.
"""

from __future__ import annotations

import os
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document as LCDocument
from langchain_core.embeddings import Embeddings
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict

from expertrag.retrieval import VectorStore
from expertrag.retrieval.store import DEFAULT_COLLECTION, DEFAULT_DB_PATH

__all__ = ["ExpertChromaRetriever", "chroma_vectorstore"]


def chroma_vectorstore(
    path: str | os.PathLike[str] | None = DEFAULT_DB_PATH,
    collection: str = DEFAULT_COLLECTION,
    embedding: Embeddings | None = None,
    host: str | None = None,
    port: int | None = None,
) -> Any:
    """A ``langchain_chroma.Chroma`` on expertrag's collection (cosine space), embedded and
    persistent at `path`, or on a Chroma server at `host`/`port`. `embedding` defaults to
    :class:`~expertrag.langchain.ExpertEmbeddings` (embedded all-MiniLM-L6-v2)."""
    try:
        from langchain_chroma import Chroma
    except ImportError as exc:
        raise ImportError(
            "chroma_vectorstore needs langchain-chroma: pip install langchain-chroma "
            "(or use ExpertChromaRetriever, which needs only langchain-core)"
        ) from exc
    store = VectorStore(path, collection, embedder=_NoEmbedder(), host=host, port=port)
    if embedding is None:
        from expertrag.langchain.embeddings import ExpertEmbeddings

        embedding = ExpertEmbeddings()
    return Chroma(
        collection_name=collection,
        embedding_function=embedding,
        client=store.client,
        collection_configuration={"hnsw": {"space": "cosine"}},
    )


class _NoEmbedder:
    """Placeholder: the core store is only used here to open the client and collection."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        raise NotImplementedError

    def embed_query(self, text: str) -> list[float]:
        raise NotImplementedError


class ExpertChromaRetriever(BaseRetriever):
    """Top-`k` documents from an expertrag :class:`VectorStore`; ``metadata["score"]`` holds
    the cosine similarity and ``id`` the stored id.

    >>> retriever = ExpertChromaRetriever(store=VectorStore("./.expertrag/chroma"), k=4)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Any
    k: int = 4
    where: dict[str, Any] | None = None

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[LCDocument]:
        return [
            LCDocument(page_content=d.text, id=d.id, metadata={**d.metadata, "score": d.score})
            for d in self.store.query(query, k=self.k, where=self.where)
        ]
