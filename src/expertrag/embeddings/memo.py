"""An embedder wrapper that embeds each distinct text once per process.

Benchmarks and data builders make many small retrievers over overlapping passages (one per
HotpotQA item, one per pool); wrapping the embedder once lets them all share the vectors,
and one big batched call up front (``embed_documents(all_texts)``) replaces hundreds of
small ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class MemoEmbedder:
    """``embed_documents`` remembers each text's vector; ``embed_query`` passes through."""

    def __init__(self, embedder: Any) -> None:
        self.embedder = embedder
        self._vectors: dict[str, Any] = {}

    def embed_documents(self, texts: Sequence[str]) -> list[Any]:
        todo = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if todo:
            self._vectors.update(zip(todo, self.embedder.embed_documents(todo), strict=True))
        return [self._vectors[t] for t in texts]

    def embed_query(self, text: str) -> Any:
        return self.embedder.embed_query(text)
