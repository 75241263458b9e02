"""The LlamaIndex skin: thin adapters from expertrag's core to LlamaIndex base classes.

Needs ``pip install 'expertrag[llama-index]'``.
"""

from __future__ import annotations

from expertrag.llama_index.embeddings import ExpertEmbedding
from expertrag.llama_index.llms import ExpertLlamaLLM
from expertrag.llama_index.postprocessors import ExpertRerank
from expertrag.llama_index.retrievers import ExpertHybridRetriever
from expertrag.llama_index.vector_store import ExpertRetriever, chroma_vector_store

__all__ = [
    "ExpertEmbedding",
    "ExpertHybridRetriever",
    "ExpertLlamaLLM",
    "ExpertRerank",
    "ExpertRetriever",
    "chroma_vector_store",
]
