"""CRAG and Self-RAG with the real shipped experts (SmolLM2-135M + grounded-qa, relevance,
critic), the standard LangChain retriever suite for the corrected context, and cookbook 04."""

from __future__ import annotations

import re
from typing import Any

import pytest

from expertrag.types import Document

pytestmark = pytest.mark.integration

CORPUS = [
    "The Saltmere Head lighthouse was built in 1862 on the northern cliffs.",
    "Bread is baked from flour, water, salt and yeast.",
    "Dogs were domesticated from wolves thousands of years ago.",
    "The Amazon is the largest rainforest on Earth.",
]


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

    return HybridRetriever([Document(t, id=f"d{i}") for i, t in enumerate(CORPUS)], k=3)


def test_crag_answers_from_the_relevant_passage_and_cites_it(llm: Any, retriever: Any) -> None:
    from expertrag.chains import AMBIGUOUS, CORRECT, CorrectiveRAG, CRAGConfig

    question = "When was the Saltmere Head lighthouse built?"
    chain = CorrectiveRAG(llm, retriever)
    res = chain.answer(question)
    # the relevance expert is confident about the passage that holds the answer; the shipped
    # upper threshold (0.99, calibrated on HotpotQA for 90% precision) may still call that
    # Ambiguous, which without an external source answers from the same refined passages
    assert res.context.scores[0] > 0.9
    assert res.action == (CORRECT if res.context.scores[0] >= chain.config.upper
                          else AMBIGUOUS)
    lenient = CorrectiveRAG(llm, retriever, config=CRAGConfig(upper=0.9, lower=0.5))
    assert lenient.answer(question).action == CORRECT
    cited = [d.id for d in res.citations]
    assert "1862" in res.answer and cited and cited[0] == "d0"
    # every citation resolves to a source document of a passage the generator was given
    assert set(cited) <= {p.id for p in res.context.passages}
    assert res.context.scores[0] == max(res.context.scores)


def test_crag_refuses_when_nothing_relevant_is_retrieved(llm: Any, retriever: Any) -> None:
    from expertrag.chains import INCORRECT, CorrectiveRAG
    from expertrag.rag import REFUSAL

    res = CorrectiveRAG(llm, retriever).answer("Who won the 1998 football World Cup final?")
    assert res.action == INCORRECT and res.answer == REFUSAL
    assert res.calls.get("generator", 0) == 0


def test_self_rag_skips_retrieval_for_instructions_and_answers_facts(llm: Any,
                                                                      retriever: Any) -> None:
    from expertrag.chains import SelfRAG

    chain = SelfRAG(llm, retriever)
    poem, fact = chain.answer_many(["Write a two-line poem about the sea.",
                                    "When was the Saltmere Head lighthouse built?"])
    assert not poem.retrieved and poem.answer
    assert fact.retrieved and "1862" in fact.answer
    assert fact.citations and fact.citations[0].id == "d0"


pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import RetrieversIntegrationTests  # noqa: E402

PARIS = [  # enough relevant passages that k of them survive correction
    "Paris is the capital and largest city of France.",
    "The Seine river flows through Paris, the French capital.",
    "France's capital, Paris, has been the seat of government since the Middle Ages.",
    "Paris, capital of France, hosts the Louvre museum.",
    "Bread is baked from flour, water, salt and yeast.",
]


class TestCorrectedContextRetriever(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type:
        from expertrag.langchain.chains import CorrectedContextRetriever

        return CorrectedContextRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        from expertrag.chains import CRAGConfig
        from expertrag.experts import attach_shipped
        from expertrag.langchain import ExpertHybridRetriever
        from expertrag.models import ExpertLLM

        llm = ExpertLLM.shared()
        attach_shipped(llm)
        return {"retriever": ExpertHybridRetriever(documents=PARIS, k=5), "llm": llm,
                "config": CRAGConfig(k=5, strips="passage")}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"


def test_chains_cookbook_runs(run_cookbook) -> None:
    pytest.importorskip("llama_index.core")
    out = run_cookbook("04_corrective_and_self_rag.py")
    assert re.search(r"CRAG \[(correct|ambiguous)\] When was the Saltmere Head lighthouse "
                     r"built\? -> 1862", out), out
    assert "CRAG [incorrect] When does the Corran Bay ferry leave the harbour? -> I don't know" \
        in out
    assert "CRAG + web" in out and "9:15" in out.split("CRAG + web", 1)[1].splitlines()[0]
    assert "LangChain CRAG: 1862" in out and "LlamaIndex CRAG: 1862" in out
