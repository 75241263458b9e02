"""LlamaIndex views of the core Chroma :class:`~expertrag.retrieval.VectorStore`.

- :class:`ExpertRetriever`: a ``BaseRetriever`` over the store (our embedder, cosine scores);
  needs nothing beyond llama-index-core.
- :func:`chroma_vector_store`: the same Chroma collection as a LlamaIndex ``ChromaVectorStore``
  (``pip install expertrag[llama-index]``, which brings llama-index-vector-stores-chroma), for
  building a ``VectorStoreIndex`` on it.
"""

from __future__ import annotations

from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from expertrag.retrieval import VectorStore
from expertrag.types import Document


def to_node(doc: Document) -> NodeWithScore:
    """A core Document -> a scored LlamaIndex node."""
    node = TextNode(text=doc.text, metadata=dict(doc.metadata or {}))
    if doc.id:
        node.id_ = doc.id
    return NodeWithScore(node=node, score=doc.score)


class ExpertRetriever(BaseRetriever):
    """Top-``k`` documents from an expertrag :class:`VectorStore`, as ``NodeWithScore``."""

    def __init__(self, store: VectorStore, k: int = 4, where: dict[str, Any] | None = None,
                 callback_manager: CallbackManager | None = None, **kwargs: Any) -> None:
        self.store = store
        self.k = k
        self.where = where
        super().__init__(callback_manager=callback_manager, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return [to_node(d) for d in self.store.query(query_bundle.query_str, self.k, self.where)]


def chroma_vector_store(store: VectorStore) -> Any:
    """The store's Chroma collection as a LlamaIndex ``ChromaVectorStore``.

    Pair it with ``ExpertEmbedding(store.embedder)`` so LlamaIndex embeds with the same model.
    """
    try:
        from llama_index.vector_stores.chroma import ChromaVectorStore
    except ImportError as exc:
        raise ImportError(
            "chroma_vector_store needs llama-index-vector-stores-chroma: "
            "pip install 'expertrag[llama-index]' (or use ExpertRetriever)"
        ) from exc
    return ChromaVectorStore(chroma_collection=store.collection)
