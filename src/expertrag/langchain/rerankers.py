"""expertrag rerankers as a LangChain ``BaseDocumentCompressor`` (conversion only).

Use it in ``ContextualCompressionRetriever(base_compressor=..., base_retriever=...)`` or call
``compress_documents`` from an LCEL step; ranking logic lives in :mod:`expertrag.rerank`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor
from langchain_core.documents import Document as LCDocument
from pydantic import ConfigDict, Field

from expertrag.rerank.base import Reranker
from expertrag.types import Document

__all__ = ["ExpertReranker", "from_lc_document", "to_lc_document"]


def from_lc_document(doc: LCDocument) -> Document:
    """LangChain Document -> core Document (id and metadata kept)."""
    return Document(text=doc.page_content, id=doc.id, metadata=dict(doc.metadata or {}))


def to_lc_document(doc: Document) -> LCDocument:
    """Core Document -> LangChain Document (scores stay in metadata)."""
    return LCDocument(page_content=doc.text, id=doc.id, metadata=dict(doc.metadata or {}))


class ExpertReranker(BaseDocumentCompressor):
    """Reranks retrieved documents with any :class:`expertrag.rerank.Reranker`.

    Returns the best ``top_n`` (None keeps all) with score >= ``threshold``; the score is in
    ``metadata["rerank_score"]`` (and a previous ``metadata["score"]`` is left as it was).

    >>> compressor = ExpertReranker(reranker=EmbeddingReranker(), top_n=3)
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Reranker = Field(description="The core reranker that scores (query, passage).")
    top_n: int | None = 3
    threshold: float | None = None

    def compress_documents(
        self,
        documents: Sequence[LCDocument],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[LCDocument]:
        """Rerank `documents` for `query`."""
        ranked = self.reranker.rerank(query, [from_lc_document(d) for d in documents],
                                      top_n=self.top_n, threshold=self.threshold)
        return [to_lc_document(d) for d in ranked]

    async def acompress_documents(
        self,
        documents: Sequence[LCDocument],
        query: str,
        callbacks: Callbacks | None = None,
    ) -> Sequence[LCDocument]:
        """Async rerank: the model runs off the event loop."""
        ranked = await self.reranker.arerank(query, [from_lc_document(d) for d in documents],
                                             top_n=self.top_n, threshold=self.threshold)
        return [to_lc_document(d) for d in ranked]

    def __init__(self, reranker: Any = None, **kwargs: Any) -> None:
        if reranker is not None:
            kwargs["reranker"] = reranker
        super().__init__(**kwargs)
