"""expertrag's judges as LangSmith / openevals-style evaluators (conversion code only).

Each evaluator is a plain callable ``evaluator(inputs=..., outputs=..., reference_outputs=...)``
returning ``{"key", "score", "comment"}``, the shape ``langsmith.evaluate`` and openevals use;
it also takes a list of such triples in one batched model call (:meth:`batch`).

>>> faithful = faithfulness_evaluator(llm)
>>> faithful(inputs={"question": q}, outputs={"answer": a, "context": docs})
{'key': 'faithfulness', 'score': 0.93, 'comment': '1 of 1 sentences supported'}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.documents import Document as LCDocument

from expertrag.evaluation.judges import (
    AnswerRelevanceJudge,
    ContextRelevanceJudge,
    EvalItem,
    FaithfulnessJudge,
)
from expertrag.evaluation.metrics import contains, token_f1
from expertrag.experts.grounded_qa import strip_citations

__all__ = ["ExpertEvaluator", "answer_relevance_evaluator", "context_relevance_evaluator",
           "correctness_evaluator", "faithfulness_evaluator"]


def _first(mapping: Any, keys: Sequence[str]) -> Any:
    if isinstance(mapping, str):
        return mapping
    if not isinstance(mapping, dict):
        return None
    return next((mapping[k] for k in keys if mapping.get(k) is not None), None)


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str | LCDocument):
        value = [value]
    return [v.page_content if isinstance(v, LCDocument) else str(v) for v in value]


def _item(inputs: Any, outputs: Any) -> EvalItem:
    question = _first(inputs, ("question", "input", "query")) or ""
    answer = _first(outputs, ("answer", "output", "response", "result")) or ""
    contexts = _texts(_first(outputs, ("context", "contexts", "documents", "source_documents"))
                      or _first(inputs, ("context", "contexts")))
    return EvalItem(str(question), str(answer), contexts)


class ExpertEvaluator:
    """An expertrag judge as an openevals-style evaluator named ``key``."""

    def __init__(self, key: str, judge: Any) -> None:
        self.key, self.judge = key, judge

    def __call__(self, *, inputs: Any = None, outputs: Any = None,
                 reference_outputs: Any = None, **kwargs: Any) -> dict[str, Any]:
        return self.batch([(inputs, outputs, reference_outputs)])[0]

    def batch(self, triples: Sequence[tuple[Any, Any, Any]]) -> list[dict[str, Any]]:
        verdicts = self.judge([_item(i, o) for i, o, _ in triples])
        return [{"key": self.key, "score": v.score, "comment": v.feedback} for v in verdicts]


def faithfulness_evaluator(llm: Any, **kwargs: Any) -> ExpertEvaluator:
    return ExpertEvaluator("faithfulness", FaithfulnessJudge(llm, **kwargs))


def context_relevance_evaluator(llm: Any, **kwargs: Any) -> ExpertEvaluator:
    return ExpertEvaluator("context_relevance", ContextRelevanceJudge(llm, **kwargs))


def answer_relevance_evaluator(llm: Any = None, **kwargs: Any) -> ExpertEvaluator:
    return ExpertEvaluator("answer_relevance", AnswerRelevanceJudge(llm, **kwargs))


def correctness_evaluator() -> Any:
    """Token F1 of the answer (citations removed) against ``reference_outputs["answer"]``
    (no model)."""

    def evaluate(*, inputs: Any = None, outputs: Any = None, reference_outputs: Any = None,
                 **kwargs: Any) -> dict[str, Any]:
        answer = strip_citations(str(_first(outputs, ("answer", "output", "response",
                                                      "result")) or ""))
        reference = _first(reference_outputs, ("answer", "output", "reference"))
        if not reference:
            return {"key": "correctness", "score": None,
                    "comment": "no reference answer given"}
        f1 = token_f1(answer, str(reference))
        hit = bool(contains(answer, str(reference)))
        return {"key": "correctness", "score": f1,
                "comment": f"reference {'contained' if hit else 'not contained'}"}

    return evaluate
