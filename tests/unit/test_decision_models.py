"""Issue 45, part 1: ExpertDecisionModel, the LangChain decision-model interface over label
probabilities, on the tiny random model.

langchain-tests 1.1.9 has no standard suite for decision models, so these are the same
checks written out: answer types, probabilities summing to one, async equal to sync, batch
equal to single (and one core call), usage reported, bad questions refused; then the
shipped experts' question sets, and CRAG / Self-RAG taking any ``BaseDecisionModel``.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_core.decisions")

from langchain_core.decisions import (
    BaseDecisionModel,
    Box,
    Choice,
    ChoiceAnswer,
    ClassifierResponse,
    Noul,
    NoulAnswer,
    NoulCriteria,
    Score,
    ScoreAnswer,
)
from langchain_core.messages import AIMessage, HumanMessage
from test_chain_skins import TEXTS, ListRetriever
from test_chains import STRIPPED, FakeCritic, FakeLLM, KeywordEvaluator
from tiny_models import save_tiny_lora, tiny_llm

from expertrag.chains.corrective import CRAGConfig
from expertrag.decisions import PRESETS, Decider, Question
from expertrag.errors import InputError
from expertrag.langchain.chains import CorrectiveRAGChain, SelfRAGChain
from expertrag.langchain.decisions import DecisionCritic, DecisionEvaluator
from expertrag.reflection import Critic
from expertrag.rerank.llm import LLMReranker
from langchain_expertrag import ExpertDecisionModel, critic_questions, relevance_questions

QUESTIONS = {
    "urgent": Noul(instructions="Does this message need an urgent reply?",
                   criteria=NoulCriteria(true="Something is broken now.")),
    "team": Choice(instructions="Which team should handle it?",
                   criteria={"billing": "Payment issues.", "technical": "Bugs.",
                             "sales": None}),
    "alike": Choice(instructions="Pick one.", criteria={"red": None, "reddish": None}),
    "anger": Score(instructions="How angry is the customer?",
                   criteria=["Calm.", "Concerned.", "Very angry."]),
}
STATE = "Production is down. Please help immediately."
PAIR = {"question": "When was the lighthouse built?",
        "passage": "The lighthouse was built in 1862 from granite."}


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny model with random adapters named like the shipped ``relevance`` and ``critic``
    (the shipped ones fit only the embedded base)."""
    llm = tiny_llm(name="tiny-decide")
    root = tmp_path_factory.mktemp("lora")
    llm.add_expert("relevance", save_tiny_lora(llm, str(root / "rel"), seed=2))
    llm.add_expert("critic", save_tiny_lora(llm, str(root / "crit"), seed=3))
    return llm


@pytest.fixture
def model(core: Any) -> ExpertDecisionModel:
    return ExpertDecisionModel.from_core(core, batch_size=8)


def count_calls(monkeypatch: pytest.MonkeyPatch, core: Any) -> list[int]:
    calls: list[int] = []
    original = core.label_probabilities

    def spy(batch: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(len(batch))
        return original(batch, *args, **kwargs)

    monkeypatch.setattr(core, "label_probabilities", spy)
    return calls


def values(response: ClassifierResponse) -> dict[str, Any]:
    return {k: a.model_dump() for k, a in response.answers.items()}


# ---------------------------------------------------------------------- the contract
def test_answer_types_and_probabilities(model: ExpertDecisionModel) -> None:
    out = model.invoke({"state": STATE, "questions": QUESTIONS})
    assert isinstance(out, ClassifierResponse) and list(out.answers) == list(QUESTIONS)
    assert isinstance(out.answers["urgent"], NoulAnswer)
    assert 0.0 <= out.nouls["urgent"].noul <= 1.0
    for qid in ("team", "alike"):
        answer = out.choices[qid]
        assert isinstance(answer, ChoiceAnswer)
        assert set(answer.probabilities) == set(QUESTIONS[qid].criteria)
        assert sum(answer.probabilities.values()) == pytest.approx(1.0)
        assert answer.choice == max(answer.probabilities, key=answer.probabilities.get)
        assert answer.confidence == pytest.approx(max(answer.probabilities.values()))
    score = out.scores["anger"]
    assert isinstance(score, ScoreAnswer) and set(score.probabilities) == {0, 1, 2}
    assert sum(score.probabilities.values()) == pytest.approx(1.0)
    assert score.score == pytest.approx(sum(k * p for k, p in score.probabilities.items()))
    assert 0.0 <= score.score <= 2.0 and score.legend == {0: "Calm.", 1: "Concerned.",
                                                          2: "Very angry."}
    assert out.model == "tiny-decide"


def test_usage_is_reported(model: ExpertDecisionModel, core: Any) -> None:
    out = model.invoke({"state": STATE, "questions": {"urgent": QUESTIONS["urgent"]}})
    assert out.usage is not None and out.usage["output_tokens"] == 0
    assert out.usage["input_tokens"] == out.usage["total_tokens"] > 10
    more = model.invoke({"state": STATE, "questions": QUESTIONS})
    assert more.usage["input_tokens"] > out.usage["input_tokens"]


def test_questions_of_one_state_share_a_call(model: ExpertDecisionModel, core: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, core)
    two = {"a": QUESTIONS["urgent"], "b": Noul(instructions="Is it about billing?")}
    model.invoke({"state": STATE, "questions": two})
    assert calls == [2]  # the two yes/no questions: one batched call


async def test_async_equals_sync(model: ExpertDecisionModel) -> None:
    request = {"state": STATE, "questions": QUESTIONS}
    sync = values(model.invoke(request))
    _close(values(await model.ainvoke(request)), sync)


def _close(a: dict[str, Any], b: dict[str, Any], tol: float = 1e-5) -> bool:
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = v
        return out

    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        if isinstance(fa[k], float):
            assert fa[k] == pytest.approx(fb[k], abs=tol), k
        else:
            assert fa[k] == fb[k], k
    return True


def test_batch_equals_single_in_one_core_call(model: ExpertDecisionModel, core: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    requests = [{"state": s, "questions": {"urgent": QUESTIONS["urgent"]}}
                for s in (STATE, "All fine, thanks.", "Refund me now or else!")]
    single = [values(model.invoke(r)) for r in requests]
    calls = count_calls(monkeypatch, core)
    batched = model.batch(requests)
    assert calls == [3]  # three states, one batched call
    for got, want in zip(batched, single, strict=True):
        _close(values(got), want)
        assert got.usage is not None and got.usage["input_tokens"] > 0


async def test_abatch_equals_batch(model: ExpertDecisionModel) -> None:
    requests = [{"state": s, "questions": QUESTIONS} for s in (STATE, "Fine.")]
    for got, want in zip(await model.abatch(requests), model.batch(requests), strict=True):
        _close(values(got), values(want))


def test_message_and_json_states(model: ExpertDecisionModel) -> None:
    chat = [HumanMessage("My invoice is wrong."), AIMessage("Sorry, let me check.")]
    out = model.invoke({"state": chat, "questions": {"team": QUESTIONS["team"]}})
    assert out.choices["team"].choice in QUESTIONS["team"].criteria
    nested = {"ticket": {"id": 7, "messages": chat}, "priority": None}
    assert model.invoke({"state": nested, "questions": {"u": QUESTIONS["urgent"]}}).nouls


@pytest.mark.parametrize(("questions", "state", "match"), [
    ({}, STATE, "at least one question"),
    ({"b": Box(instructions="Find the cat.")}, STATE, "Box"),
    ({"r": relevance_questions()["relevant"]}, STATE, "state mapping"),
    ({"r": relevance_questions()["relevant"]}, {"question": "q"}, "passage"),
    ({"s": Choice(instructions={"expertrag": "issup", "text": "x"},
                  criteria={"yes": None, "no": None})}, PAIR, "must keep the labels"),
    ({"s": Score(instructions="x", criteria=[str(i) for i in range(11)])}, STATE,
     "2 to 10 levels"),
    ({"n": Noul(instructions={"expertrag": "nope"})}, STATE, "unknown expertrag preset"),
    ({"u": QUESTIONS["urgent"]}, [{"type": "image", "base64": "AAAA", "mime_type": "x"}],
     "JSON|image"),
])
def test_bad_questions_are_refused(model: ExpertDecisionModel, questions: dict, state: Any,
                                   match: str) -> None:
    with pytest.raises((InputError, ValueError), match=match):
        model.invoke({"state": state, "questions": questions})


def test_traced_as_the_model(model: ExpertDecisionModel) -> None:
    meta = model._traced_config(None)["metadata"]
    assert meta["ls_provider"] == "expertrag" and meta["ls_model_name"] == "tiny-decide"
    assert ExpertDecisionModel(expert="critic")._name() == "smollm2-135m-instruct:critic"
    assert ExpertDecisionModel().client is None  # construction loads nothing


# ---------------------------------------------------------------------- presets
def test_relevance_preset_equals_the_llm_reranker(model: ExpertDecisionModel,
                                                  core: Any) -> None:
    pairs = [(PAIR["question"], PAIR["passage"]),
             ("Who bakes bread?", "Bread is baked from flour, water, salt and yeast.")]
    reranker = LLMReranker.with_relevance_expert(core, batch_size=8)
    want = reranker.score_pairs(pairs)
    got = model.batch([{"state": {"question": q, "passage": p},
                        "questions": relevance_questions()} for q, p in pairs])
    assert [r.nouls["relevant"].noul for r in got] == pytest.approx(want, abs=1e-6)
    assert DecisionEvaluator(model).score_pairs(pairs) == pytest.approx(want, abs=1e-6)


def test_critic_presets_equal_the_critic(model: ExpertDecisionModel, core: Any) -> None:
    critic = Critic(core, batch_size=8)
    state = {**PAIR, "answer": "It was built in 1862."}
    out = model.invoke({"state": state, "questions": critic_questions()})
    assert out.nouls["retrieve"].noul == pytest.approx(
        critic.retrieve([PAIR["question"]])[0].probs["yes"], abs=1e-6)
    assert out.nouls["isrel"].noul == pytest.approx(
        critic.relevance(PAIR["question"], [PAIR["passage"]])[0].probs["relevant"], abs=1e-6)
    issup = critic.support(PAIR["question"], [(PAIR["passage"], state["answer"])])[0].probs
    assert out.choices["issup"].probabilities == pytest.approx(issup, abs=1e-6)
    isuse = critic.utility(PAIR["question"], [state["answer"]])[0].probs
    assert out.scores["isuse"].probabilities == pytest.approx(
        {int(g) - 1: p for g, p in isuse.items()}, abs=1e-6)
    # the adapter the chains use gives the critic's own judgements back
    judged = DecisionCritic(model).judge("issup", [{**state}])[0]
    assert judged.probs == pytest.approx(issup, abs=1e-6)
    with pytest.raises(InputError):
        critic_questions("nope")


def test_core_decider_groups_by_labels(core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, core)
    decider = Decider(core, count_tokens=False)
    out = decider.decide([
        ("s1", {"a": Question("noul", "Is it?"), "b": Question("choice", "Which?",
                                                              labels=("x", "y"))}),
        ("s2", {"a": Question("noul", "Is it?")}),
    ])
    assert sorted(calls) == [1, 2]  # yes/no rows of both states together; the choice apart
    assert list(out[0].answers) == ["a", "b"] and out[0].input_tokens == 0
    assert set(PRESETS) == {"relevance", "retrieve", "isrel", "issup", "isuse"}


# ---------------------------------------------------------------------- chains
class KeywordDecisionModel(BaseDecisionModel):
    """A stand-in for a hosted decision model: reads only the state and the question ids
    of relevance_questions / critic_questions, answers like KeywordEvaluator / FakeCritic."""

    model: str = "hosted-keywords"
    requests: int = 0

    @property
    def _provider(self) -> str:
        return "test"

    def _classify(self, state: Any, questions: dict[str, Any]) -> ClassifierResponse:
        self.requests += 1
        answers: dict[str, Any] = {}
        for qid, q in questions.items():
            if qid == "relevant":
                score = KeywordEvaluator().score_pairs([(state["question"], state["passage"])])
                answers[qid] = NoulAnswer(type="noul", noul=score[0])
                continue
            judged = FakeCritic().judge(qid, [state])[0].probs
            if isinstance(q, Noul):
                answers[qid] = NoulAnswer(type="noul", noul=next(iter(judged.values())))
            elif isinstance(q, Choice):
                answers[qid] = ChoiceAnswer(type="choice", choice=max(judged, key=judged.get),
                                            probabilities=judged, confidence=max(judged.values()))
            else:
                levels = {int(g) - 1: p for g, p in judged.items()}
                answers[qid] = ScoreAnswer(type="score", score=0.0, legend={},
                                           probabilities=levels, confidence=0.5)
        return ClassifierResponse(model=self.model, answers=answers)


def test_crag_takes_any_decision_model() -> None:
    hosted = KeywordDecisionModel()
    chain = CorrectiveRAGChain(FakeLLM(), ListRetriever(texts=TEXTS), evaluator=hosted,
                               config=CRAGConfig(**{"upper": 0.8, "lower": 0.3, **STRIPPED,
                                                    "strips": "passage"}))
    assert isinstance(chain.core.evaluator, DecisionEvaluator)
    out = chain.invoke("What is the capital of France?")
    assert out["answer"] == "Paris [1]." and out["action"] == "correct"
    assert out["scores"][0] == pytest.approx(0.9) and hosted.requests >= len(TEXTS)


def test_self_rag_takes_any_decision_model() -> None:
    hosted = KeywordDecisionModel()
    chain = SelfRAGChain(FakeLLM(), ListRetriever(texts=TEXTS), critic=hosted)
    assert isinstance(chain.core.critic, DecisionCritic)
    out = chain.invoke("What is the capital of France?")
    assert out["answer"] == "Paris [1]." and out["retrieved"]
    want = SelfRAGChain(FakeLLM(), ListRetriever(texts=TEXTS), critic=FakeCritic())
    assert out["candidates"][0]["score"] == pytest.approx(
        want.invoke("What is the capital of France?")["candidates"][0]["score"])
