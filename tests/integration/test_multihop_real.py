"""MultiHopRAG with the real shipped experts (SmolLM2-135M + hop, grounded-qa): a bridge
question answered at hop 2, the standard LangChain retriever suite for its context, and
cookbook 07."""

from __future__ import annotations

import re
from typing import Any

import pytest

from expertrag.types import Document

pytestmark = pytest.mark.integration

CORPUS = [
    "The Saltmere Head lighthouse was designed by the engineer Maren Tollef in 1859.",
    "The Saltmere Head lighthouse was built in 1862 from granite quarried at Corran.",
    "The Saltmere Head lighthouse tower is 31 metres tall and has 117 steps.",
    "Maren Tollef was born in the fishing town of Kessby and studied engineering in "
    "Edinburgh.",
    "The cooperative's bakery sells rye bread to visitors on market days.",
    "Kessby harbour freezes over in hard winters.",
]
QUESTION = "In which town was the engineer who designed the Saltmere Head lighthouse born?"


@pytest.fixture(scope="module")
def llm() -> Any:
    from expertrag.experts import attach_shipped
    from expertrag.models import ExpertLLM

    model = ExpertLLM.shared()
    attach_shipped(model)
    return model


@pytest.fixture(scope="module")
def retriever() -> Any:
    from expertrag.retrieval.hybrid import HybridRetriever

    return HybridRetriever([Document(t, id=f"d{i}") for i, t in enumerate(CORPUS)], k=2)


def test_the_bridge_passage_is_found_by_the_hop_query(llm: Any, retriever: Any) -> None:
    from expertrag.chains import MultiHopConfig, MultiHopRAG

    assert "d3" not in {d.id for d in retriever.retrieve(QUESTION, 2)}
    res = MultiHopRAG(llm, retriever, MultiHopConfig(k=2)).answer(QUESTION)
    assert len(res.hops) >= 2, res.hops
    assert "Maren Tollef" in res.hops[1].query
    assert "d3" in {d.id for d in res.context.evidence}
    assert "Kessby" in res.answer and "d3" in {d.id for d in res.citations}


def test_batched_answers_agree_with_one_by_one(llm: Any, retriever: Any) -> None:
    """Batched and one-by-one runs find the same bridge and answer (not compared token for
    token: on a bf16 host padding can move a near tie)."""
    from expertrag.chains import MultiHopConfig, MultiHopRAG

    rag = MultiHopRAG(llm, retriever, MultiHopConfig(k=2))
    questions = [QUESTION, "How tall is the Saltmere Head lighthouse tower?"]
    batched = rag.answer_many(questions)
    single = [rag.answer(q) for q in questions]
    for res in (batched[0], single[0]):
        assert "Maren Tollef" in res.hops[1].query and "Kessby" in res.answer
    assert "31" in batched[1].answer and "31" in single[1].answer


pytest.importorskip("langchain_tests")
from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402


class TestMultiHopRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type:
        from expertrag.langchain.chains import MultiHopRetriever

        return MultiHopRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        from expertrag.experts import attach_shipped
        from expertrag.langchain import ExpertHybridRetriever
        from expertrag.models import ExpertLLM

        llm = ExpertLLM.shared()
        attach_shipped(llm)
        return {"retriever": ExpertHybridRetriever(documents=CORPUS, k=5), "llm": llm,
                "config": {"k": 5, "context_size": 5}}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


def test_multihop_cookbook_runs(run_cookbook) -> None:
    pytest.importorskip("llama_index.core")
    out = run_cookbook("07_multihop.py")
    assert re.search(r"hop 2: query '[^']*Maren Tollef[^']*'", out), out
    assert re.search(r"MultiHopRAG: .*Kessby", out), out
    assert re.search(r"LangChain MultiHopRAGChain: .*Kessby", out), out
    assert re.search(r"LlamaIndex MultiHopQueryEngine: .*Kessby", out), out
