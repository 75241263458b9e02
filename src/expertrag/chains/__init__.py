"""Retriever chains built on the expert LLM: naive (``chains.naive``), corrective (CRAG),
self-reflective (Self-RAG) and multi-hop (``chains.multihop``), framework-free. The
LangChain and LlamaIndex skins wrap them
(``expertrag.langchain.chains``, ``expertrag.llama_index.chains``).
"""

from expertrag.chains.base import ChainError, SourceTimeoutError, keywords
from expertrag.chains.corrective import (
    AMBIGUOUS,
    CORRECT,
    INCORRECT,
    CorrectedContext,
    CorrectiveRAG,
    CRAGConfig,
    CRAGResult,
    calibrate_thresholds,
    split_strips,
)
from expertrag.chains.multihop import (
    Hop,
    MultiHopConfig,
    MultiHopContext,
    MultiHopRAG,
    MultiHopResult,
)
from expertrag.chains.naive import Answer, EvidenceGate, RAGPipeline
from expertrag.chains.self_reflective import (
    Candidate,
    NativeCritic,
    SelfRAG,
    SelfRAGConfig,
    SelfRAGResult,
)

__all__ = [
    "AMBIGUOUS",
    "CORRECT",
    "INCORRECT",
    "Answer",
    "CRAGConfig",
    "CRAGResult",
    "Candidate",
    "ChainError",
    "CorrectedContext",
    "CorrectiveRAG",
    "EvidenceGate",
    "Hop",
    "MultiHopConfig",
    "MultiHopContext",
    "MultiHopRAG",
    "MultiHopResult",
    "NativeCritic",
    "RAGPipeline",
    "SelfRAG",
    "SelfRAGConfig",
    "SelfRAGResult",
    "SourceTimeoutError",
    "calibrate_thresholds",
    "keywords",
    "split_strips",
]
