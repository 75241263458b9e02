"""Issue 45, part 2, on the real models: the CRAG and Self-RAG Workflows give the core
chains' answers with the shipped experts."""

from __future__ import annotations

from typing import Any

import pytest

from expertrag.types import Document

pytestmark = pytest.mark.integration

CORPUS = [
    "The Saltmere Head lighthouse was built in 1862 on the northern cliffs.",
    "Bread is baked from flour, water, salt and yeast.",
]
QUESTION = "When was the Saltmere Head lighthouse built?"


@pytest.fixture(scope="module")
def llm() -> Any:
    from expertrag.experts import attach_shipped
    from expertrag.models import ExpertLLM

    model = ExpertLLM.shared()
    attach_shipped(model)
    return model


def source(query: str, k: int) -> list[Document]:
    return [Document(t, id=f"d{i}") for i, t in enumerate(CORPUS)][:k]


async def test_crag_and_self_rag_workflows_match_the_core_chains(llm: Any) -> None:
    from expertrag.chains import CorrectiveRAG, SelfRAG
    from expertrag.llama_index.workflows import (
        AnswerDeltaEvent,
        CorrectiveRAGWorkflow,
        SelfRAGWorkflow,
    )

    want = CorrectiveRAG(llm, source).answer(QUESTION)
    handler = CorrectiveRAGWorkflow(llm, source).run(question=QUESTION)
    deltas = [e.delta async for e in handler.stream_events() if isinstance(e, AnswerDeltaEvent)]
    response = await handler
    assert response.response == want.answer and "1862" in want.answer
    assert "".join(deltas) == want.answer
    assert response.metadata["action"] == want.action

    want = SelfRAG(llm, source).answer(QUESTION)
    response = await SelfRAGWorkflow(llm, source).run(question=QUESTION)
    assert response.response == want.answer
    assert response.metadata["retrieved"] == want.retrieved
