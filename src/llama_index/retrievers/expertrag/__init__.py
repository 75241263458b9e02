"""LlamaIndex retriever integrations: hybrid BM25 + dense, the Chroma vector store, the
knowledge graph, CRAG's corrected context and the multi-hop context, each a
``BaseRetriever``.

Re-exports of the classes in :mod:`expertrag.llama_index` (same objects).
"""

from expertrag.llama_index.chains import CorrectedContextRetriever, MultiHopRetriever
from expertrag.llama_index.graph import ExpertGraphRetriever
from expertrag.llama_index.retrievers import ExpertHybridRetriever
from expertrag.llama_index.vector_store import ExpertRetriever

__all__ = [
    "CorrectedContextRetriever",
    "ExpertGraphRetriever",
    "ExpertHybridRetriever",
    "ExpertRetriever",
    "MultiHopRetriever",
]
