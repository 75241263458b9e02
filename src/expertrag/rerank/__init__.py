"""Rerankers behind one small protocol, plus fusion and post-processing.

- :class:`Reranker`: ``score(query, texts)``; ``rerank(query, documents, top_n, threshold)``
  and ``arerank`` (scores in ``Document.score`` and ``metadata["rerank_score"]``).
- Backends: :class:`CrossEncoderReranker` (HF sequence classifiers, length-sorted batches),
  :class:`LLMReranker` (P("yes") from the local expert LLM), :class:`EmbeddingReranker`.
- :func:`reciprocal_rank_fusion`, :func:`mmr`, :func:`lost_in_the_middle_reorder`.

Model-backed backends import torch/transformers only when first used.
"""

from __future__ import annotations

from expertrag.rerank.base import RERANK_SCORE, Reranker, rank_by_scores
from expertrag.rerank.cross_encoder import CrossEncoderReranker
from expertrag.rerank.embedding import EmbeddingReranker, cosine_scores
from expertrag.rerank.fusion import reciprocal_rank_fusion
from expertrag.rerank.llm import LLMReranker
from expertrag.rerank.postprocess import lost_in_the_middle_reorder, mmr, mmr_indices

__all__ = [
    "RERANK_SCORE",
    "CrossEncoderReranker",
    "EmbeddingReranker",
    "LLMReranker",
    "Reranker",
    "cosine_scores",
    "lost_in_the_middle_reorder",
    "mmr",
    "mmr_indices",
    "rank_by_scores",
    "reciprocal_rank_fusion",
]
