"""LlamaIndex ``BaseEmbedding`` over :class:`expertrag.embeddings.Embedder` (conversion only)."""

from __future__ import annotations

from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr

from expertrag.embeddings import DEFAULT_EMBEDDING_MODEL, Embedder


class ExpertEmbedding(BaseEmbedding):
    """Embeddings from the embedded all-MiniLM-L6-v2 (default) or any sentence-transformers
    model; the model loads on first use.

    >>> index = VectorStoreIndex.from_documents(docs, embed_model=ExpertEmbedding())
    """

    model_name: str = Field(default=DEFAULT_EMBEDDING_MODEL,
                            description="Alias, local folder or HF id of the model.")
    device: str | None = Field(default=None)
    normalize: bool = Field(default=True)

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder | None = None, **kwargs: Any) -> None:
        if embedder is not None:
            kwargs.setdefault("model_name", embedder.model_name)
            kwargs.setdefault("embed_batch_size", embedder.batch_size)
        super().__init__(**kwargs)
        self._embedder = embedder or Embedder(
            self.model_name, device=self.device, batch_size=self.embed_batch_size,
            normalize=self.normalize,
        )

    @classmethod
    def class_name(cls) -> str:
        return "ExpertEmbedding"

    @property
    def embedder(self) -> Embedder:
        """The core :class:`Embedder` (share it with ``expertrag.retrieval.VectorStore``)."""
        return self._embedder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embedder.embed_query(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embedder.embed_documents([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._embedder.embed_documents(list(texts))

    # The core embedder is synchronous; these run it inline, as LlamaIndex's own
    # HuggingFaceEmbedding does.
    async def _aget_query_embedding(self, query: str) -> Embedding:
        return self._get_query_embedding(query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embedding(text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._get_text_embeddings(texts)
