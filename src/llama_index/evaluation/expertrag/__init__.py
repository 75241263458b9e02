"""LlamaIndex evaluation integration: expertrag's local judges (critic and relevance LoRA
experts, embeddings, token F1) as ``BaseEvaluator``s.

Re-exports of :mod:`expertrag.llama_index.evaluators` (same objects).
"""

from expertrag.llama_index.evaluators import (
    ExpertAnswerRelevancyEvaluator,
    ExpertContextRelevancyEvaluator,
    ExpertCorrectnessEvaluator,
    ExpertFaithfulnessEvaluator,
)

__all__ = [
    "ExpertAnswerRelevancyEvaluator",
    "ExpertContextRelevancyEvaluator",
    "ExpertCorrectnessEvaluator",
    "ExpertFaithfulnessEvaluator",
]
