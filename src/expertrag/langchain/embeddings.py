"""``ExpertEmbeddings``: the expertrag :class:`~expertrag.embeddings.Embedder` as LangChain
``Embeddings`` (embedded all-MiniLM-L6-v2 by default; any sentence-transformers model)."""

from __future__ import annotations

import threading
from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field

from expertrag.embeddings import Embedder

__all__ = ["ExpertEmbeddings"]

_SHARED: dict[tuple[Any, ...], Embedder] = {}
_LOCK = threading.Lock()


def shared_embedder(model: str, device: str | None = None, batch_size: int = 32,
                    normalize: bool = True) -> Embedder:
    """One lazily loaded :class:`Embedder` per (model, options) in this process."""
    key = (model, device, batch_size, normalize)
    with _LOCK:
        if key not in _SHARED:
            _SHARED[key] = Embedder(model, device=device, batch_size=batch_size,
                                    normalize=normalize)
        return _SHARED[key]


class ExpertEmbeddings(BaseModel, Embeddings):
    """LangChain embeddings over a shared, lazily loaded sentence-transformers model.

    >>> emb = ExpertEmbeddings()                    # embedded all-MiniLM-L6-v2, offline
    >>> len(emb.embed_query("hello"))
    384
    """

    model_config = ConfigDict(protected_namespaces=(), arbitrary_types_allowed=True)

    model: str = "all-minilm-l6-v2"
    """An embedded alias, a local directory or a Hugging Face id."""
    device: str | None = None
    batch_size: int = 32
    normalize: bool = True
    client: Any = Field(default=None, exclude=True)
    """An :class:`Embedder` to use instead of the shared one."""

    @property
    def embedder(self) -> Embedder:
        if self.client is not None:
            return self.client
        return shared_embedder(self.model, self.device, self.batch_size, self.normalize)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_documents(list(texts))

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text)
