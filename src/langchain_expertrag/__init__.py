"""LangChain integration for expertrag, in the partner-package layout.

``from langchain_expertrag import ChatExpertLLM, ExpertEmbeddings, ExpertReranker`` gives the
same objects as :mod:`expertrag.langchain` (this module only re-exports them; there is one
implementation). Everything runs offline: the chat model defaults to the embedded
SmolLM2-135M-Instruct and the embeddings to the embedded all-MiniLM-L6-v2, both loaded on
first use, not at import.

Needs ``pip install 'expertrag[langchain]'``.
"""

from expertrag import __version__
from expertrag.langchain.chains import (
    CorrectedContextRetriever,
    CorrectiveRAGChain,
    MultiHopRAGChain,
    MultiHopRetriever,
    SelfRAGChain,
    lc_source,
)
from expertrag.langchain.chat_models import ChatExpertLLM
from expertrag.langchain.decisions import (
    DecisionCritic,
    DecisionEvaluator,
    ExpertDecisionModel,
    critic_questions,
    relevance_questions,
)
from expertrag.langchain.embeddings import ExpertEmbeddings
from expertrag.langchain.evaluators import (
    ExpertEvaluator,
    answer_relevance_evaluator,
    context_relevance_evaluator,
    correctness_evaluator,
    faithfulness_evaluator,
)
from expertrag.langchain.graph import ExpertGraphRetriever
from expertrag.langchain.rerankers import ExpertReranker
from expertrag.langchain.retrievers import ExpertHybridRetriever
from expertrag.langchain.vectorstores import ExpertChromaRetriever, chroma_vectorstore

__all__ = [
    "ChatExpertLLM",
    "CorrectedContextRetriever",
    "CorrectiveRAGChain",
    "DecisionCritic",
    "DecisionEvaluator",
    "ExpertChromaRetriever",
    "ExpertDecisionModel",
    "ExpertEmbeddings",
    "ExpertEvaluator",
    "ExpertGraphRetriever",
    "ExpertHybridRetriever",
    "ExpertReranker",
    "MultiHopRAGChain",
    "MultiHopRetriever",
    "SelfRAGChain",
    "__version__",
    "answer_relevance_evaluator",
    "chroma_vectorstore",
    "context_relevance_evaluator",
    "correctness_evaluator",
    "critic_questions",
    "faithfulness_evaluator",
    "lc_source",
    "relevance_questions",
]
