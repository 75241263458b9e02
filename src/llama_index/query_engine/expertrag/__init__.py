"""LlamaIndex query-engine integration: Corrective RAG, Self-RAG and multi-hop RAG as
``BaseQueryEngine``s, with the instrumentation events they emit and :func:`llama_source`,
which turns a LlamaIndex retriever or tool into a document source for them; and CRAG and
Self-RAG as Workflows, with their typed events.

Re-exports of :mod:`expertrag.llama_index.chains` and :mod:`expertrag.llama_index.workflows`
(same objects).
"""

from expertrag.llama_index.chains import (
    ChainStageEvent,
    CorrectiveRAGQueryEngine,
    CRAGActionEvent,
    MultiHopQueryEngine,
    SelfRAGQueryEngine,
    SelfRAGRetrieveEvent,
    llama_source,
)
from expertrag.llama_index.workflows import (
    AnswerDeltaEvent,
    CorrectiveRAGWorkflow,
    CRAGContextEvent,
    CRAGExternalEvent,
    CRAGGradedEvent,
    CRAGRefinedEvent,
    CRAGRetrievedEvent,
    SelfRAGCandidatesEvent,
    SelfRAGDecisionEvent,
    SelfRAGRetrievedEvent,
    SelfRAGWorkflow,
)

__all__ = [
    "AnswerDeltaEvent",
    "CRAGActionEvent",
    "CRAGContextEvent",
    "CRAGExternalEvent",
    "CRAGGradedEvent",
    "CRAGRefinedEvent",
    "CRAGRetrievedEvent",
    "ChainStageEvent",
    "CorrectiveRAGQueryEngine",
    "CorrectiveRAGWorkflow",
    "MultiHopQueryEngine",
    "SelfRAGCandidatesEvent",
    "SelfRAGDecisionEvent",
    "SelfRAGQueryEngine",
    "SelfRAGRetrieveEvent",
    "SelfRAGRetrievedEvent",
    "SelfRAGWorkflow",
    "llama_source",
]
