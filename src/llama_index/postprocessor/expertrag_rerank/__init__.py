"""LlamaIndex node-postprocessor integration: any expertrag reranker (cross-encoder, LLM
pointwise, embedding) as a ``BaseNodePostprocessor``.

A re-export of :class:`expertrag.llama_index.postprocessors.ExpertRerank` (same object).
"""

from expertrag.llama_index.postprocessors import ExpertRerank

__all__ = ["ExpertRerank"]
