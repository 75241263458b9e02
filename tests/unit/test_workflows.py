"""Issue 45, part 2: CRAG and Self-RAG as LlamaIndex Workflows, with the fake models of
test_chains: one step per stage, typed events on the stream, the answer streamed, and the
same results as the core chains."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("llama_index.core.workflow")

from test_chains import STRIPPED, FakeCritic, FakeLLM, KeywordEvaluator, corpus

from expertrag.chains.corrective import CorrectiveRAG, CRAGConfig
from expertrag.chains.self_reflective import SelfRAG
from expertrag.errors import InputError
from expertrag.llama_index.workflows import (
    AnswerDeltaEvent,
    CorrectiveRAGWorkflow,
    CRAGContextEvent,
    CRAGExternalEvent,
    CRAGGradedEvent,
    CRAGRefinedEvent,
    CRAGRetrievedEvent,
    SelfRAGCandidatesEvent,
    SelfRAGDecisionEvent,
    SelfRAGRetrievedEvent,
    SelfRAGWorkflow,
)
from llama_index.query_engine.expertrag import (
    CorrectiveRAGWorkflow as NamespacedCRAG,
)

TEXTS = ("Dogs bark loudly.", "Paris is the capital of France.", "France is in Europe.")
QUESTION = "What is the capital of France?"
CONFIG = CRAGConfig(**{"upper": 0.8, "lower": 0.3, **STRIPPED})


async def run(workflow: Any, **kwargs: Any) -> tuple[Any, list[Any]]:
    handler = workflow.run(**kwargs)
    events = [ev async for ev in handler.stream_events()]
    return await handler, events


def crag_core(external: Any = None) -> CorrectiveRAG:
    return CorrectiveRAG(FakeLLM(), corpus(*TEXTS), evaluator=KeywordEvaluator(),
                         external=external, config=CONFIG)


@pytest.mark.parametrize("external", [None, corpus("Paris is the capital of France.")])
async def test_crag_workflow_steps_events_and_results(external: Any) -> None:
    want = crag_core(external).answer(QUESTION)
    workflow = CorrectiveRAGWorkflow(FakeLLM(), corpus(*TEXTS), evaluator=KeywordEvaluator(),
                                     external=external, config=CONFIG)
    response, events = await run(workflow, question=QUESTION)
    assert response.response == want.answer == "Paris [1]."
    assert response.metadata["action"] == want.action
    assert response.metadata["scores"] == pytest.approx(list(want.context.scores))
    assert response.metadata["context"] == [d.text for d in want.context.passages]
    assert [n.node.get_content() for n in response.source_nodes] == \
        [d.text for d in want.citations]
    stages = [type(e) for e in events if not isinstance(e, AnswerDeltaEvent)]
    assert stages[:6] == [CRAGRetrievedEvent, CRAGGradedEvent, CRAGRefinedEvent,
                          CRAGExternalEvent, CRAGContextEvent, type(events[-1])]
    graded = next(e for e in events if isinstance(e, CRAGGradedEvent))
    assert graded.action == want.action and graded.scores == pytest.approx(
        list(want.context.scores))
    deltas = "".join(e.delta for e in events if isinstance(e, AnswerDeltaEvent))
    assert deltas == want.answer


async def test_crag_workflow_refuses_when_nothing_is_relevant() -> None:
    workflow = CorrectiveRAGWorkflow(FakeLLM(), corpus("Dogs bark."),
                                     evaluator=KeywordEvaluator(), config=CONFIG)
    response, events = await run(workflow, question=QUESTION)
    assert response.metadata["action"] == "incorrect" and response.metadata["refused"]
    assert response.response == "I don't know."
    context = next(e for e in events if isinstance(e, CRAGContextEvent))
    assert context.passages == []


async def test_self_rag_workflow_steps_events_and_results() -> None:
    want = SelfRAG(FakeLLM(), corpus(*TEXTS), critic=FakeCritic(retrieve_yes=0.9)
                   ).answer(QUESTION)
    workflow = SelfRAGWorkflow(FakeLLM(), corpus(*TEXTS), critic=FakeCritic(retrieve_yes=0.9))
    response, events = await run(workflow, question=QUESTION)
    assert response.response == want.answer
    assert response.metadata["retrieved"] is want.retrieved is True
    assert [c["score"] for c in response.metadata["candidates"]] == \
        pytest.approx([c.score for c in want.candidates])
    kinds = [type(e) for e in events]
    assert kinds[:3] == [SelfRAGDecisionEvent, SelfRAGRetrievedEvent, SelfRAGCandidatesEvent]
    assert [e.delta for e in events if isinstance(e, AnswerDeltaEvent)] == [want.answer]
    decision = events[0]
    assert decision.retrieve_probability == pytest.approx(want.retrieve_probability)
    cands = next(e for e in events if isinstance(e, SelfRAGCandidatesEvent)).candidates
    assert [c["text"] for c in cands] == [c.text for c in want.candidates]


async def test_self_rag_workflow_without_retrieval() -> None:
    workflow = SelfRAGWorkflow(FakeLLM(), corpus(*TEXTS), critic=FakeCritic(retrieve_yes=0.1))
    response, events = await run(workflow, question="Write a haiku about rain.")
    assert response.metadata["retrieved"] is False
    assert next(e for e in events if isinstance(e, SelfRAGRetrievedEvent)).documents == []


async def test_workflows_need_a_question() -> None:
    workflow = CorrectiveRAGWorkflow(FakeLLM(), corpus(*TEXTS), evaluator=KeywordEvaluator(),
                                     config=CONFIG)
    with pytest.raises(InputError):
        await workflow.run(text="no question")
    assert NamespacedCRAG is CorrectiveRAGWorkflow
