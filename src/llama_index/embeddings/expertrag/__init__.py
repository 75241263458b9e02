"""LlamaIndex embeddings integration: the embedded all-MiniLM-L6-v2 (or any
sentence-transformers model) as a ``BaseEmbedding``.

A re-export of :class:`expertrag.llama_index.embeddings.ExpertEmbedding` (same object).
"""

from expertrag.llama_index.embeddings import ExpertEmbedding

__all__ = ["ExpertEmbedding"]
