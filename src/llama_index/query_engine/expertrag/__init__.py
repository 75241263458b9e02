"""LlamaIndex query-engine integration: Corrective RAG and Self-RAG as ``BaseQueryEngine``s,
with the instrumentation events they emit and :func:`llama_source`, which turns a LlamaIndex
retriever or tool into a document source for them.

Re-exports of :mod:`expertrag.llama_index.chains` (same objects).
"""

from expertrag.llama_index.chains import (
    ChainStageEvent,
    CorrectiveRAGQueryEngine,
    CRAGActionEvent,
    SelfRAGQueryEngine,
    SelfRAGRetrieveEvent,
    llama_source,
)

__all__ = [
    "CRAGActionEvent",
    "ChainStageEvent",
    "CorrectiveRAGQueryEngine",
    "SelfRAGQueryEngine",
    "SelfRAGRetrieveEvent",
    "llama_source",
]
