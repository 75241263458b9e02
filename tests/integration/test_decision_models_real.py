"""Issue 45, part 1, on the real models: ExpertDecisionModel over the embedded SmolLM2-135M
with the shipped relevance and critic experts."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration

QUESTION = "When was the Saltmere Head lighthouse built?"
GOOD = "The Saltmere Head lighthouse was built in 1862 on the northern cliffs."
BAD = "Bread is baked from flour, water, salt and yeast."


@pytest.fixture(scope="module")
def model() -> Any:
    from langchain_expertrag import ExpertDecisionModel

    return ExpertDecisionModel(batch_size=8)


def test_relevance_questions_match_the_reranker(model: Any) -> None:
    from expertrag.rerank.llm import LLMReranker
    from langchain_expertrag import relevance_questions

    requests = [{"state": {"question": QUESTION, "passage": p},
                 "questions": relevance_questions()} for p in (GOOD, BAD)]
    good, bad = (r.nouls["relevant"].noul for r in model.batch(requests))
    assert good > 0.9 > 0.5 > bad
    reranker = LLMReranker.with_relevance_expert(model.decider.llm, batch_size=8)
    assert [good, bad] == pytest.approx(reranker.score_pairs([(QUESTION, GOOD),
                                                              (QUESTION, BAD)]), abs=1e-5)


async def test_critic_questions_and_the_contract(model: Any) -> None:
    from langchain_expertrag import critic_questions

    request = {"state": {"question": QUESTION, "passage": GOOD, "answer": "In 1862."},
               "questions": critic_questions()}
    out = model.invoke(request)
    assert set(out.answers) == {"retrieve", "isrel", "issup", "isuse"}
    assert sum(out.choices["issup"].probabilities.values()) == pytest.approx(1.0)
    assert sum(out.scores["isuse"].probabilities.values()) == pytest.approx(1.0)
    assert out.usage["input_tokens"] > 0 and out.model == "smollm2-135m-instruct"
    irrelevant = model.invoke({"state": {"question": QUESTION, "passage": BAD},
                               "questions": critic_questions("isrel")})
    assert out.nouls["isrel"].noul > irrelevant.nouls["isrel"].noul
    again = await model.ainvoke(request)
    for qid, answer in out.answers.items():
        got = again.answers[qid].model_dump()
        for key, value in answer.model_dump().items():
            if isinstance(value, float):
                assert got[key] == pytest.approx(value, abs=1e-5)


def test_generic_questions_on_the_base(model: Any) -> None:
    from langchain_core.decisions import Choice, Noul

    out = model.invoke({"state": "Production is down. Please help immediately.",
                        "questions": {
                            "urgent": Noul(instructions="Is this message urgent?"),
                            "team": Choice(instructions="Which team should handle it?",
                                           criteria={"billing": "payments",
                                                     "technical": "outages and bugs"}),
                        }})
    assert 0.0 <= out.nouls["urgent"].noul <= 1.0
    assert sum(out.choices["team"].probabilities.values()) == pytest.approx(1.0)
