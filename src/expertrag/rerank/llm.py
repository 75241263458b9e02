"""LLM pointwise reranker: relevance = P("yes") for "is this passage relevant?".

One forward pass per (question, passage) and no generation (``ExpertLLM.label_probabilities``),
so the score is a probability, not parsed text. ``label_probabilities`` plans padding-aware
batches from the token lengths, passages are cut to a token budget, and an expert adapter can be
named: :meth:`LLMReranker.with_relevance_expert` uses the shipped ``relevance`` expert with the
prompt it was trained on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from expertrag.errors import InputError
from expertrag.experts import RELEVANCE, ensure_attached
from expertrag.experts.relevance import RELEVANCE_PROMPT
from expertrag.rerank.base import Reranker, check_query

DEFAULT_SYSTEM = (
    "You judge search results. Given a question and a passage, answer 'yes' if the passage "
    "is relevant to the question (it helps answer it), otherwise 'no'. Answer with one word."
)
DEFAULT_PROMPT = (
    "Question: {query}\n\nPassage: {passage}\n\n"
    "Is the passage relevant to the question? Answer yes or no."
)
class LLMReranker(Reranker):
    """Pointwise relevance from a local :class:`~expertrag.models.ExpertLLM`.

    ``labels[0]`` is the positive label; the score is its probability among ``labels``
    (with capitalised variants such as "Yes"/"No" pooled in when ``pool_case`` is set).
    """

    name = "llm-pointwise"

    def __init__(
        self,
        llm: Any,
        expert: str | None = None,
        prompt: str = DEFAULT_PROMPT,
        system: str | None = DEFAULT_SYSTEM,
        labels: tuple[str, ...] = ("yes", "no"),
        batch_size: int = 8,
        max_passage_tokens: int = 256,
        max_query_tokens: int = 64,
        pool_case: bool = True,
    ) -> None:
        if "{query}" not in prompt or "{passage}" not in prompt:
            raise InputError("prompt must contain {query} and {passage}")
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise InputError(f"labels need a positive and at least one other, got {labels!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.llm = llm
        self.expert = expert
        self.prompt = prompt
        self.system = system
        self.labels = tuple(labels)
        self.batch_size = batch_size
        self.max_passage_tokens = max_passage_tokens
        self.max_query_tokens = max_query_tokens
        self.pool_case = pool_case
        self._label_set: tuple[tuple[str, ...], set[str]] | None = None

    @classmethod
    def with_relevance_expert(cls, llm: Any, expert: str = RELEVANCE,
                              **kwargs: Any) -> LLMReranker:
        """A reranker scoring with the ``relevance`` expert and its training prompt. When
        ``llm`` has no expert of that name, the shipped one is attached (it fits the embedded
        SmolLM2-135M-Instruct base; another base is refused with an ``ExpertError``)."""
        ensure_attached(llm, expert)
        kwargs.setdefault("prompt", RELEVANCE_PROMPT)
        kwargs.setdefault("system", None)
        return cls(llm, expert=expert, **kwargs)

    def _labels(self) -> tuple[tuple[str, ...], set[str]]:
        """All labels asked for, and which of them count as positive."""
        if self._label_set is None:
            tok = self.llm.tokenizer
            wanted = list(self.labels)
            if self.pool_case:
                wanted += [v for lab in self.labels for v in (lab.capitalize(), " " + lab)]
            chosen: list[str] = []
            first_ids: set[int] = set()
            for lab in wanted:  # keep only variants with a distinct first token
                ids = tok(lab, add_special_tokens=False)["input_ids"]
                if ids and ids[0] not in first_ids:
                    first_ids.add(ids[0])
                    chosen.append(lab)
            pos = self.labels[0]
            positive = {lab for lab in chosen if lab.strip().lower() == pos.lower()}
            self._label_set = (tuple(chosen), positive)
        return self._label_set

    def _truncate(self, text: str, budget: int) -> str:
        tok = self.llm.tokenizer
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= budget else tok.decode(ids[:budget]) + " ..."

    def messages(self, query: str, passage: str) -> list[dict[str, str]]:
        """The conversation sent to the model for one pair."""
        user = self.prompt.format(
            query=self._truncate(query.strip(), self.max_query_tokens),
            passage=self._truncate(passage.strip(), self.max_passage_tokens))
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return [*msgs, {"role": "user", "content": user}]

    def score(self, query: str, texts: list[str]) -> list[float]:
        """P(positive label) for each text, batched on the LLM's worker."""
        check_query(query)
        # label_probabilities groups the rows into padding-aware batches itself
        return self.score_pairs([(query, t) for t in texts])

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """P(positive) for (query, text) pairs of any queries, in one batched call."""
        for query, _ in pairs:
            check_query(query)
        if not pairs:
            return []
        convs = [self.messages(q, t) for q, t in pairs]
        labels, positive = self._labels()
        probs = self.llm.label_probabilities(convs, labels=labels, expert=self.expert,
                                             batch_size=self.batch_size)
        return [sum(p for lab, p in row.items() if lab in positive) / (sum(row.values()) or 1.0)
                for row in probs]

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        # label_probabilities waits on the LLM's own worker; this thread only waits
        return await asyncio.to_thread(self.score, query, texts)

    def __repr__(self) -> str:
        return f"LLMReranker(llm={getattr(self.llm, 'model_name', self.llm)!r}, " \
               f"expert={self.expert!r})"
