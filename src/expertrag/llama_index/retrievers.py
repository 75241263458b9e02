"""The hybrid first stage (BM25 + dense, RRF) as a LlamaIndex ``BaseRetriever``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle

from expertrag.llama_index.vector_store import to_node as _to_node
from expertrag.retrieval.hybrid import HybridRetriever
from expertrag.types import Document

__all__ = ["ExpertHybridRetriever"]


def _to_document(item: Any) -> Any:
    if isinstance(item, NodeWithScore):
        item = item.node
    if isinstance(item, BaseNode):
        return Document(text=item.get_content(metadata_mode=MetadataMode.NONE),
                        id=item.node_id, metadata=dict(item.metadata or {}))
    return item  # a core Document or a string


class ExpertHybridRetriever(BaseRetriever):
    """BM25 + dense retrieval fused by reciprocal rank fusion, as ``NodeWithScore``.

    ``documents``: nodes, core Documents or strings (dense side in memory); or ``store``
    (a core :class:`~expertrag.retrieval.VectorStore`). Node ids are kept.
    """

    def __init__(
        self,
        documents: Sequence[Any] | None = None,
        *,
        store: Any = None,
        embedder: Any = None,
        k: int = 4,
        bm25_k: int = 100,
        dense_k: int = 100,
        rrf_k: int = 60,
        stemmer: str | None = "auto",
        callback_manager: CallbackManager | None = None,
        **kwargs: Any,
    ) -> None:
        docs = None if documents is None else [_to_document(d) for d in documents]
        self.core = HybridRetriever(docs, store=store, embedder=embedder, k=k, bm25_k=bm25_k,
                                    dense_k=dense_k, rrf_k=rrf_k, stemmer=stemmer)
        super().__init__(callback_manager=callback_manager, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [_to_node(d) for d in self.core.retrieve(query_bundle.query_str)]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [_to_node(d) for d in await self.core.aretrieve(query_bundle.query_str)]
