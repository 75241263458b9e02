"""Corrective RAG and Self-RAG as LlamaIndex Workflows (``llama-index-workflows``).

One step per stage of the core chains, each calling the core's own stage method
(:meth:`CorrectiveRAG.stage_retrieve` ... :meth:`CorrectiveRAG.stage_generate`,
:meth:`SelfRAG.stage_decide` ... :meth:`SelfRAG.stage_select`), so a workflow gives the same
results as the core chain and the query engines. Every step's event is also written to the
run's stream, and the answer is streamed as :class:`AnswerDeltaEvent` s:

>>> workflow = CorrectiveRAGWorkflow(llm, index.as_retriever(similarity_top_k=4))
>>> handler = workflow.run(question="When was the lighthouse built?")
>>> async for event in handler.stream_events():
...     if isinstance(event, AnswerDeltaEvent):
...         print(event.delta, end="")
>>> response = await handler        # a Response: answer, cited source_nodes, metadata

Conversion code only: the stages and their logic live in :mod:`expertrag.chains`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.schema import NodeWithScore
from llama_index.core.workflow import Context, Event, StartEvent, StopEvent, Workflow, step

from expertrag.chains.base import Trace, check_question
from expertrag.chains.corrective import CorrectedContext, CorrectiveRAG, CRAGConfig
from expertrag.chains.self_reflective import SelfRAG, SelfRAGConfig
from expertrag.config import as_config
from expertrag.llama_index.chains import (
    _listener,
    _node,
    crag_response,
    llama_source,
    selfrag_response,
)
from expertrag.models.worker import iterate_in_thread

__all__ = [
    "AnswerDeltaEvent",
    "CRAGContextEvent",
    "CRAGExternalEvent",
    "CRAGGradedEvent",
    "CRAGRefinedEvent",
    "CRAGRetrievedEvent",
    "CorrectiveRAGWorkflow",
    "SelfRAGCandidatesEvent",
    "SelfRAGDecisionEvent",
    "SelfRAGRetrievedEvent",
    "SelfRAGWorkflow",
]


# ---------------------------------------------------------------------- events
class _StageEvent(Event):
    """A stage's output; ``state`` and ``trace`` carry the core chain's work to the next
    step (not for display)."""

    question: str
    state: Any = None
    trace: Any = None


class CRAGRetrievedEvent(_StageEvent):
    """The retrieved documents."""

    documents: list[NodeWithScore]


class CRAGGradedEvent(_StageEvent):
    """The evaluator's score of each document and the action taken (correct, ambiguous,
    incorrect)."""

    scores: list[float]
    action: str


class CRAGRefinedEvent(_StageEvent):
    """The strips of the documents kept (Correct / Ambiguous), with their scores."""

    strips: list[str]
    strip_scores: list[float]


class CRAGExternalEvent(_StageEvent):
    """External knowledge (Incorrect / Ambiguous with an external source): the rewritten
    query, the documents found, or the error."""

    rewritten_query: str | None = None
    documents: list[NodeWithScore]
    error: str | None = None


class CRAGContextEvent(_StageEvent):
    """The corrected context the answer is generated from."""

    action: str
    passages: list[NodeWithScore]


class AnswerDeltaEvent(Event):
    """A piece of the answer, as it is generated (Self-RAG: the chosen answer, once)."""

    delta: str


class SelfRAGDecisionEvent(_StageEvent):
    """The critic's P(retrieval needed) and the decision."""

    retrieve_probability: float
    retrieve: bool


class SelfRAGRetrievedEvent(_StageEvent):
    """The retrieved documents (none when the decision was not to retrieve)."""

    documents: list[NodeWithScore]


class SelfRAGCandidatesEvent(_StageEvent):
    """Every candidate answer with its critique (IsRel, IsSup, IsUse) and score."""

    candidates: list[dict[str, Any]]


def _question(ev: StartEvent) -> str:
    for key in ("question", "query", "input", "query_str"):
        value = ev.get(key)
        if value is not None:
            return check_question(str(value))
    return check_question(None)


def _publish(ctx: Context, ev: Event) -> Event:
    ctx.write_event_to_stream(ev)
    return ev


# ---------------------------------------------------------------------- CRAG
class CorrectiveRAGWorkflow(Workflow):
    """CRAG as a Workflow: ``retrieve`` -> ``grade`` -> ``refine`` -> ``external`` ->
    ``assemble`` -> ``generate`` (streamed). Arguments as :class:`CorrectiveRAGQueryEngine`'s
    (``config``: a :class:`CRAGConfig`, a dict of its settings or a saved one's path);
    ``run(question=...)`` returns a ``Response`` (cited ``source_nodes``, the evidence in
    ``metadata``). Workflow options (``timeout``, ``verbose``) go through ``**kwargs``."""

    def __init__(self, llm: Any = None, retriever: Any = None, evaluator: Any = None,
                 external: Any = None, config: CRAGConfig | dict[str, Any] | str | None = None,
                 core: CorrectiveRAG | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", None)
        super().__init__(**kwargs)
        self.core = core or CorrectiveRAG(
            llm, llama_source(retriever), evaluator=evaluator,
            external=None if external is None else llama_source(external),
            config=as_config(CRAGConfig, config))

    @step
    async def retrieve(self, ctx: Context, ev: StartEvent) -> CRAGRetrievedEvent:
        question = _question(ev)
        trace = Trace(listener=_listener("crag"))
        state = await asyncio.to_thread(self.core.stage_retrieve, [question], trace)
        return _publish(ctx, CRAGRetrievedEvent(
            question=question, documents=[_node(d) for d in state.retrieved[0]],
            state=state, trace=trace))

    @step
    async def grade(self, ctx: Context, ev: CRAGRetrievedEvent) -> CRAGGradedEvent:
        state = await asyncio.to_thread(self.core.stage_grade, ev.state, ev.trace)
        return _publish(ctx, CRAGGradedEvent(
            question=ev.question, scores=list(state.scores[0]), action=state.actions[0],
            state=state, trace=ev.trace))

    @step
    async def refine(self, ctx: Context, ev: CRAGGradedEvent) -> CRAGRefinedEvent:
        state = await asyncio.to_thread(self.core.stage_refine, ev.state, ev.trace)
        return _publish(ctx, CRAGRefinedEvent(
            question=ev.question, strips=[s.text for s in state.strips[0]],
            strip_scores=[s.score for s in state.strips[0]], state=state, trace=ev.trace))

    @step
    async def external(self, ctx: Context, ev: CRAGRefinedEvent) -> CRAGExternalEvent:
        state = await asyncio.to_thread(self.core.stage_external, ev.state, ev.trace)
        return _publish(ctx, CRAGExternalEvent(
            question=ev.question, rewritten_query=state.rewritten.get(0),
            documents=[_node(d) for d in state.external.get(0, [])],
            error=state.errors.get(0), state=state, trace=ev.trace))

    @step
    async def assemble(self, ctx: Context, ev: CRAGExternalEvent) -> CRAGContextEvent:
        contexts = await asyncio.to_thread(self.core.stage_assemble, ev.state, ev.trace)
        context: CorrectedContext = contexts[0]
        return _publish(ctx, CRAGContextEvent(
            question=ev.question, action=context.action,
            passages=[_node(d) for d in context.passages], state=context, trace=ev.trace))

    @step
    async def generate(self, ctx: Context, ev: CRAGContextEvent) -> StopEvent:
        result = None
        async for part in iterate_in_thread(
                lambda: self.core.stage_generate(ev.state, ev.trace)):
            if isinstance(part, str):
                ctx.write_event_to_stream(AnswerDeltaEvent(delta=part))
            else:
                result = part
        return StopEvent(result=crag_response(result))


# ---------------------------------------------------------------------- Self-RAG
class SelfRAGWorkflow(Workflow):
    """Self-RAG as a Workflow: ``decide`` (the critic's Retrieve) -> ``retrieve`` ->
    ``candidates`` (each candidate generated and critiqued: IsRel, IsSup, IsUse) ->
    ``select``. The answer is chosen after every candidate is scored, so it is streamed as
    one :class:`AnswerDeltaEvent`. Arguments as :class:`SelfRAGQueryEngine`'s;
    ``run(question=...)`` returns a ``Response``."""

    def __init__(self, llm: Any = None, retriever: Any = None, critic: Any = None,
                 config: SelfRAGConfig | dict[str, Any] | str | None = None,
                 core: SelfRAG | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("timeout", None)
        super().__init__(**kwargs)
        self.core = core or SelfRAG(llm, llama_source(retriever), critic=critic,
                                    config=as_config(SelfRAGConfig, config))

    @step
    async def decide(self, ctx: Context, ev: StartEvent) -> SelfRAGDecisionEvent:
        question = _question(ev)
        trace = Trace(listener=_listener("self_rag"))
        state = await asyncio.to_thread(self.core.stage_decide, [question], trace)
        return _publish(ctx, SelfRAGDecisionEvent(
            question=question, retrieve_probability=state.probabilities[0],
            retrieve=state.retrieve[0], state=state, trace=trace))

    @step
    async def retrieve(self, ctx: Context, ev: SelfRAGDecisionEvent) -> SelfRAGRetrievedEvent:
        state = await asyncio.to_thread(self.core.stage_retrieve, ev.state, ev.trace)
        return _publish(ctx, SelfRAGRetrievedEvent(
            question=ev.question, documents=[_node(d) for d in state.docs[0]], state=state,
            trace=ev.trace))

    @step
    async def candidates(self, ctx: Context,
                         ev: SelfRAGRetrievedEvent) -> SelfRAGCandidatesEvent:
        state = await asyncio.to_thread(self.core.stage_candidates, ev.state, ev.trace)
        cands = [{"text": c.text, "score": c.score, "isrel": c.isrel, "issup": c.issup,
                  "isuse": c.isuse, "passages": [d.text for d in c.passages]}
                 for c in state.candidates[0]]
        return _publish(ctx, SelfRAGCandidatesEvent(question=ev.question, candidates=cands,
                                                    state=state, trace=ev.trace))

    @step
    async def select(self, ctx: Context, ev: SelfRAGCandidatesEvent) -> StopEvent:
        result = self.core.stage_select(ev.state, ev.trace)[0]
        ctx.write_event_to_stream(AnswerDeltaEvent(delta=result.answer))
        return StopEvent(result=selfrag_response(result))
