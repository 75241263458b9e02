"""LlamaIndex vector-store integration over expertrag's Chroma store
(:class:`expertrag.retrieval.VectorStore`).

- :func:`chroma_vector_store`: the store's collection as a ``ChromaVectorStore`` (needs
  llama-index-vector-stores-chroma) for building a ``VectorStoreIndex`` on it.
- :class:`ExpertRetriever`: a ``BaseRetriever`` straight over the store (also in
  ``llama_index.retrievers.expertrag``).

Re-exports of :mod:`expertrag.llama_index.vector_store` (same objects).
"""

from expertrag.llama_index.vector_store import ExpertRetriever, chroma_vector_store

__all__ = ["ExpertRetriever", "chroma_vector_store"]
