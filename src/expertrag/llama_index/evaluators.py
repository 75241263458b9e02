"""expertrag's judges as LlamaIndex evaluators (conversion code only).

``BaseEvaluator`` subclasses returning ``EvaluationResult`` (score, passing, feedback), usable
on their own and with LlamaIndex's ``BatchEvalRunner``:

- :class:`ExpertFaithfulnessEvaluator`: the critic's IsSup of each answer sentence against
  the contexts (a probability, not "yes" found somewhere in a reply).
- :class:`ExpertContextRelevancyEvaluator`: the relevance expert's P(yes) per context.
- :class:`ExpertAnswerRelevancyEvaluator`: the critic's IsUse (or an embedding cosine).
- :class:`ExpertCorrectnessEvaluator`: token F1 / containment against a reference answer,
  without a model (never a parser error on a one-line reply).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from llama_index.core.evaluation import BaseEvaluator, EvaluationResult

from expertrag.evaluation.judges import (
    AnswerRelevanceJudge,
    ContextRelevanceJudge,
    EvalItem,
    FaithfulnessJudge,
)
from expertrag.evaluation.metrics import contains, token_f1
from expertrag.experts.grounded_qa import strip_citations

__all__ = ["ExpertAnswerRelevancyEvaluator", "ExpertContextRelevancyEvaluator",
           "ExpertCorrectnessEvaluator", "ExpertFaithfulnessEvaluator"]


class _JudgeEvaluator(BaseEvaluator):
    """An expertrag judge behind LlamaIndex's evaluator interface."""

    def __init__(self, judge: Any) -> None:
        self._judge = judge

    def _get_prompts(self) -> dict[str, Any]:
        return {}

    def _update_prompts(self, prompts: dict[str, Any]) -> None:
        return None

    def _evaluate(self, query: str | None, response: str | None,
                  contexts: Sequence[str] | None) -> EvaluationResult:
        if not query:
            return EvaluationResult(query=query, response=response, contexts=contexts,
                                    invalid_result=True, invalid_reason="no query given")
        item = EvalItem(query, response or "", list(contexts or []))
        (verdict,) = self._judge([item])
        return EvaluationResult(query=query, response=response, contexts=list(contexts or []),
                                passing=verdict.passing, score=verdict.score,
                                feedback=verdict.feedback)

    async def aevaluate(self, query: str | None = None, response: str | None = None,
                        contexts: Sequence[str] | None = None, **kwargs: Any
                        ) -> EvaluationResult:
        return await asyncio.to_thread(self._evaluate, query, response, contexts)


class ExpertFaithfulnessEvaluator(_JudgeEvaluator):
    """Is the response supported by the contexts? (critic expert, IsSup per sentence)"""

    def __init__(self, llm: Any, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(FaithfulnessJudge(llm, threshold=threshold, **kwargs))


class ExpertContextRelevancyEvaluator(_JudgeEvaluator):
    """Are the contexts relevant to the query? (relevance expert, P(yes) per context)"""

    def __init__(self, llm: Any, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(ContextRelevanceJudge(llm, threshold=threshold, **kwargs))


class ExpertAnswerRelevancyEvaluator(_JudgeEvaluator):
    """Does the response address the query? (embedding cosine by default, or critic IsUse
    with ``method="isuse"``; the threshold defaults to the method's calibrated one)"""

    def __init__(self, llm: Any = None, threshold: float | None = None,
                 **kwargs: Any) -> None:
        super().__init__(AnswerRelevanceJudge(llm, threshold=threshold, **kwargs))


class ExpertCorrectnessEvaluator(_JudgeEvaluator):
    """How close the response is to ``reference`` (token F1; passing when it contains the
    reference or F1 >= ``threshold``). No model involved."""

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold

    async def aevaluate(self, query: str | None = None, response: str | None = None,
                        contexts: Sequence[str] | None = None, reference: str | None = None,
                        **kwargs: Any) -> EvaluationResult:
        if not reference:
            return EvaluationResult(query=query, response=response, invalid_result=True,
                                    invalid_reason="no reference answer given")
        answer = strip_citations(response or "")
        f1 = token_f1(answer, reference)
        hit = bool(contains(answer, reference))
        return EvaluationResult(query=query, response=response, contexts=contexts,
                                passing=hit or f1 >= self.threshold, score=f1,
                                feedback=f"token F1 {f1:.2f}; reference "
                                         f"{'contained' if hit else 'not contained'}")
