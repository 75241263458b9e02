"""Self-RAG's four reflection questions, asked of the ``critic`` expert as label probabilities.

:class:`Critic` asks them in padding-aware batches (``ExpertLLM.label_probabilities``: one
forward pass per item, nothing generated or parsed). The prompts, labels and the
:class:`Judgement` they give live with the expert in :mod:`expertrag.experts.critic` and are
re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from expertrag.experts import CRITIC, ensure_attached
from expertrag.experts.critic import (
    ISREL,
    ISSUP,
    ISUSE,
    JUDGEMENTS,
    LABELS,
    PROMPTS,
    RETRIEVE,
    UTILITY_WEIGHTS,
    Judgement,
    critic_messages,
)

__all__ = ["ISREL", "ISSUP", "ISUSE", "JUDGEMENTS", "LABELS", "PROMPTS", "RETRIEVE",
           "UTILITY_WEIGHTS", "Critic", "Judgement", "critic_messages"]


class Critic:
    """The four reflection judgements from an ``ExpertLLM`` and its ``critic`` expert, each
    batched into padding-aware forward passes; nothing is generated or parsed."""

    def __init__(self, llm: Any, expert: str | None = CRITIC, batch_size: int = 16) -> None:
        self.llm = llm
        self.expert = expert
        self.batch_size = batch_size

    @classmethod
    def shipped(cls, llm: Any, expert: str = CRITIC, **kwargs: Any) -> Critic:
        """A critic on the shipped ``critic`` expert (attached when ``llm`` lacks it)."""
        ensure_attached(llm, expert)
        return cls(llm, expert=expert, **kwargs)

    def judge(self, kind: str, items: Sequence[dict[str, str]]) -> list[Judgement]:
        """``items``: dicts with ``question`` and, as the judgement needs, ``passage`` and
        ``answer``. One forward pass per item, all in one batched call."""
        convs = [critic_messages(kind, it.get("question", ""), it.get("passage"),
                                 it.get("answer")) for it in items]
        if not convs:
            return []
        labels = LABELS[kind]
        rows = self.llm.label_probabilities(convs, labels=labels, expert=self.expert,
                                            batch_size=self.batch_size)
        out = []
        for row in rows:
            total = sum(row[lab] for lab in labels) or 1.0
            out.append(Judgement(kind, {lab: row[lab] / total for lab in labels}))
        return out

    def retrieve(self, questions: Sequence[str]) -> list[Judgement]:
        return self.judge(RETRIEVE, [{"question": q} for q in questions])

    def relevance(self, question: str, passages: Sequence[str]) -> list[Judgement]:
        return self.judge(ISREL, [{"question": question, "passage": p} for p in passages])

    def support(self, question: str, pairs: Sequence[tuple[str, str]]) -> list[Judgement]:
        """IsSup of (passage, answer) pairs."""
        return self.judge(ISSUP, [{"question": question, "passage": p, "answer": a}
                                  for p, a in pairs])

    def utility(self, question: str, answers: Sequence[str]) -> list[Judgement]:
        return self.judge(ISUSE, [{"question": question, "answer": a} for a in answers])
