"""The hybrid first stage (BM25 + dense, RRF) as a LangChain ``BaseRetriever``."""

from __future__ import annotations

from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document as LCDocument
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, PrivateAttr

from expertrag.langchain.rerankers import from_lc_document, to_lc_document
from expertrag.retrieval.hybrid import HybridRetriever
from expertrag.types import Document

__all__ = ["ExpertHybridRetriever"]


class ExpertHybridRetriever(BaseRetriever):
    """BM25 + dense retrieval fused by reciprocal rank fusion; ``k`` results per query
    (overridable per call: ``retriever.invoke(query, k=3)``).

    ``documents`` are strings, LangChain Documents or core Documents (dense side in memory);
    or pass ``store`` (a core :class:`~expertrag.retrieval.VectorStore`). ``embedder`` defaults
    to the embedded all-MiniLM-L6-v2. Scores: ``metadata["rrf_score"]``, plus ``bm25_rank``
    and ``dense_rank``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    documents: list[Any] | None = None
    store: Any = None
    embedder: Any = None
    k: int = 4
    bm25_k: int = 100
    dense_k: int = 100
    rrf_k: int = 60
    stemmer: str | None = "auto"
    _core: HybridRetriever | None = PrivateAttr(default=None)

    @property
    def core(self) -> HybridRetriever:
        """The core :class:`HybridRetriever` (built on first use)."""
        if self._core is None:
            docs = None if self.documents is None else [
                from_lc_document(d) if isinstance(d, LCDocument) else d for d in self.documents
            ]
            self._core = HybridRetriever(docs, store=self.store, embedder=self.embedder,
                                         k=self.k, bm25_k=self.bm25_k, dense_k=self.dense_k,
                                         rrf_k=self.rrf_k, stemmer=self.stemmer)
        return self._core

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None
    ) -> list[LCDocument]:
        return [_out(d) for d in self.core.retrieve(query, k or self.k)]

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
        k: int | None = None,
    ) -> list[LCDocument]:
        return [_out(d) for d in await self.core.aretrieve(query, k or self.k)]


def _out(doc: Document) -> LCDocument:
    return to_lc_document(doc)
