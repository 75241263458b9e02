"""The ``relevance`` expert: grades whether a passage helps answer a question, as P("yes")
from one forward pass (CRAG's retrieval evaluator, the LLM reranker, the evidence gate).

Its prompt (:data:`RELEVANCE_PROMPT`, :func:`relevance_messages`) is the one it is trained
on and the one :meth:`expertrag.rerank.llm.LLMReranker.with_relevance_expert` scores with;
its output is one of :data:`RELEVANCE_LABELS`, read as label probabilities.
"""

from __future__ import annotations

NAME = "relevance"

#: The prompt the ``relevance`` expert is trained on (no system message); training builds its
#: rows with it (:func:`relevance_messages`), so scoring matches training.
RELEVANCE_PROMPT = (
    "Passage:\n{passage}\n\nQuestion: {query}\n"
    "Does the passage contain information that helps answer the question? Answer yes or no."
)
#: Relevance labels, (relevant, irrelevant): the targets the relevance expert is trained on
#: and the ``labels`` to pass to ``ExpertLLM.label_probabilities`` when scoring.
RELEVANT = "yes"
IRRELEVANT = "no"
RELEVANCE_LABELS: tuple[str, str] = (RELEVANT, IRRELEVANT)


def relevance_messages(question: str, passage: str) -> list[dict[str, str]]:
    """The relevance-grading prompt for one (question, passage) pair: used by training and by
    scoring (``llm.label_probabilities(batch, labels=RELEVANCE_LABELS, expert=...)``)."""
    user = RELEVANCE_PROMPT.format(passage=passage.strip(), query=question.strip())
    return [{"role": "user", "content": user}]
