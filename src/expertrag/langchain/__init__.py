"""The LangChain skin: expertrag's core as LangChain components.

- :class:`ChatExpertLLM` - ``BaseChatModel`` over the LoRA-expert LLM (tools, structured
  output, streaming, true batching).
- :class:`ExpertEmbeddings` - ``Embeddings`` over the embedded sentence-transformers model.
- :func:`chroma_vectorstore` - a ``langchain_chroma.Chroma`` on the same store layout, and
  :class:`ExpertChromaRetriever` - a ``BaseRetriever`` over the core
  :class:`expertrag.retrieval.VectorStore`.
- :class:`ExpertReranker` - ``BaseDocumentCompressor`` over any expertrag reranker, and
  :class:`ExpertHybridRetriever` - BM25 + dense fused by reciprocal rank fusion.
- :class:`ExpertDecisionModel` - ``BaseDecisionModel`` (langchain-core >= 1.8): Noul, Choice
  and Score questions answered from label probabilities, with the shipped experts' question
  sets (:func:`relevance_questions`, :func:`critic_questions`).

Needs ``pip install 'expertrag[langchain]'``.
"""

from expertrag.langchain.chat_models import ChatExpertLLM
from expertrag.langchain.decisions import (
    ExpertDecisionModel,
    critic_questions,
    relevance_questions,
)
from expertrag.langchain.embeddings import ExpertEmbeddings
from expertrag.langchain.rerankers import ExpertReranker
from expertrag.langchain.retrievers import ExpertHybridRetriever
from expertrag.langchain.vectorstores import ExpertChromaRetriever, chroma_vectorstore

__all__ = [
    "ChatExpertLLM",
    "ExpertChromaRetriever",
    "ExpertDecisionModel",
    "ExpertEmbeddings",
    "ExpertHybridRetriever",
    "ExpertReranker",
    "chroma_vectorstore",
    "critic_questions",
    "relevance_questions",
]
