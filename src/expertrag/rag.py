"""The naive grounded pipeline, now :mod:`expertrag.chains.naive` (its prompt and citation
helpers live with the expert in :mod:`expertrag.experts.grounded_qa`). This module re-exports
both for one release: import from ``expertrag.chains`` instead.
"""

from expertrag.chains.naive import (
    EVIDENCE_GATE_KEY,
    INSTRUCTIONS,
    REFUSAL,
    Answer,
    EvidenceGate,
    RAGPipeline,
    Retriever,
    build_messages,
    format_passages,
    generate_grounded,
    is_refusal,
    parse_citations,
    select_citations,
    strip_citations,
    tidy_citations,
)

__all__ = ["EVIDENCE_GATE_KEY", "INSTRUCTIONS", "REFUSAL", "Answer", "EvidenceGate",
           "RAGPipeline", "Retriever", "build_messages", "format_passages",
           "generate_grounded", "is_refusal", "parse_citations", "select_citations",
           "strip_citations", "tidy_citations"]
