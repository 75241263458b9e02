"""CRAG and Self-RAG cores with fake models (decisions, arithmetic, bounds, failures) and the
native reflection-token mode on a tiny random model given those tokens."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import ClassVar

import pytest

from expertrag.chains.base import (
    ChainError,
    SourceTimeoutError,
    as_retrieve,
    call_source,
    keywords,
)
from expertrag.chains.corrective import (
    AMBIGUOUS,
    CORRECT,
    INCORRECT,
    CorrectiveRAG,
    CRAGConfig,
    calibrate_thresholds,
    decide,
    split_strips,
)
from expertrag.chains.self_reflective import (
    NATIVE_TOKENS,
    NativeCritic,
    SelfRAG,
    SelfRAGConfig,
    has_reflection_tokens,
)
from expertrag.errors import InputError
from expertrag.rag import REFUSAL
from expertrag.reflection import ISREL, ISSUP, ISUSE, LABELS, RETRIEVE, Judgement
from expertrag.types import Document


# ------------------------------------------------------------------------------ fakes
@dataclass
class Result:
    text: str
    completion_tokens: int = 3
    finish_reason: str = "stop"
    mean_logprob: float | None = -0.5


class FakeLLM:
    """Answers "Paris [1]." when a prompt holds a passage with "Paris", else refuses."""

    experts: ClassVar[list[str]] = ["grounded-qa", "critic", "relevance"]

    def __init__(self) -> None:
        self.generated: list[list[dict]] = []

    def generate(self, convs, expert=None, max_new_tokens=64, **kwargs):
        self.generated.extend(convs)
        out = []
        for conv in convs:
            text = conv[0]["content"]
            if kwargs.get("continue_final_message"):
                out.append(Result("It is in France."))
            elif "Paris" in text.split("Question:")[0]:
                out.append(Result("Paris [1]."))
            elif "[1]" not in text:
                out.append(Result("A poem about the sea."))
            else:
                out.append(Result(REFUSAL))
        return out

    def stream(self, conv, expert=None, max_new_tokens=64, **kwargs):
        (final,) = self.generate([conv], expert=expert)

        @dataclass
        class Chunk:
            text: str
            final: object = None

        words = final.text.split(" ")
        for i, w in enumerate(words):
            yield Chunk(w if i == 0 else " " + w)
        yield Chunk("", final)


class KeywordEvaluator:
    """A Reranker-like evaluator: 0.9 for texts holding "Paris", 0.4 for "France", else 0.05."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def score_pairs(self, pairs):
        self.calls.append(len(pairs))
        return [0.9 if "Paris" in t else 0.4 if "France" in t else 0.05 for _, t in pairs]


def corpus(*texts: str):
    docs = [Document(text=t, id=f"d{i}", metadata={"source": f"doc{i}"})
            for i, t in enumerate(texts)]
    return lambda q, k: docs[:k]


# sentence strips of the documents at or above `lower`: the refinement mechanism under test
# (the shipped defaults keep the best whole passages, a special case of it)
STRIPPED = {"strips": "sentences", "strip_floor": None, "doc_floor": None, "max_strips": 6}


def crag(retriever, external=None, **config) -> tuple[CorrectiveRAG, FakeLLM, KeywordEvaluator]:
    llm, ev = FakeLLM(), KeywordEvaluator()
    cfg = CRAGConfig(**{"upper": 0.8, "lower": 0.3, **STRIPPED, **config})
    return CorrectiveRAG(llm, retriever, evaluator=ev, external=external, config=cfg), llm, ev


# ------------------------------------------------------------------------------ CRAG
def test_stream_yields_context_then_text_then_the_result():
    from expertrag.chains.corrective import CorrectedContext, CRAGResult

    events = []
    chain, _, _ = crag(corpus("Paris is the capital of France."))
    parts = list(chain.stream("Capital of France?", listener=lambda e, d: events.append(e)))
    assert isinstance(parts[0], CorrectedContext) and isinstance(parts[-1], CRAGResult)
    assert "".join(p for p in parts if isinstance(p, str)) == "Paris [1]."
    assert parts[-1].answer == "Paris [1]." and parts[-1].citations[0].id == "d0"
    assert events[:2] == ["retrieve_start", "retrieve_end"] and "actions" in events
    assert events[-1] == "generate_end"
    refusing, _, _ = crag(corpus("Cats sleep."))
    parts = list(refusing.stream("Capital of France?"))
    assert parts[1] == REFUSAL and parts[-1].refused


def test_actions_follow_the_thresholds():
    assert decide([0.1, 0.85], upper=0.8, lower=0.3) == CORRECT
    assert decide([0.1, 0.29], upper=0.8, lower=0.3) == INCORRECT
    assert decide([0.1, 0.5], upper=0.8, lower=0.3) == AMBIGUOUS
    assert decide([0.8], upper=0.8, lower=0.3) == CORRECT  # >= upper
    assert decide([0.3], upper=0.8, lower=0.3) == AMBIGUOUS  # not < lower
    assert decide([], upper=0.8, lower=0.3) == INCORRECT


def test_strips_cover_the_text_in_order():
    text = "One is here. Two is there! Three? Four is last. Five."
    assert split_strips(text, "sentences", sentences=2) == [
        "One is here. Two is there!", "Three? Four is last.", "Five."]
    assert split_strips(text, "passage") == [text]
    words = split_strips("a b c d e f g", "words", words=3)
    assert words == ["a b c", "d e f", "g"]
    assert split_strips("  ", "sentences") == []
    with pytest.raises(InputError, match="strip mode"):
        split_strips(text, "paragraphs")


def test_correct_refines_strips_and_citations_point_to_the_source():
    docs = corpus("Berlin is big. It has rivers. Paris is the capital of France. It is old.",
                  "Cats sleep a lot. Dogs bark.", "France has a king once. Or not.")
    chain, _llm, ev = crag(docs, strip_sentences=1, k=3)
    res = chain.answer("What is the capital of France?")
    assert res.action == CORRECT and res.answer == "Paris [1]." and not res.refused
    ctx = res.context
    assert ctx.scores == [0.9, 0.05, 0.4]
    # doc 1 (0.05 < lower) is not refined; docs 0 and 2 are, strip by strip, in one pass
    assert {s.source for s in ctx.strips} == {0, 2}
    assert ev.calls == [3, 6]
    passage = ctx.passages[0]
    assert passage.text == "Paris is the capital of France."
    assert ctx.passages[1].text == "France has a king once."
    assert passage.id == "d0" and passage.metadata["source"] == "doc0"
    assert passage.metadata["crag_strips"] == [2]
    assert [p.id for p in ctx.passages] == ["d0", "d2"]  # document order
    assert res.citations[0].id == "d0" and res.citations[0].metadata["cited"]
    assert res.calls == {"evaluator": 9, "generator": 1, "completion_tokens": 3}
    assert set(res.seconds) >= {"retrieve", "evaluate", "refine", "generate"}


def test_incorrect_without_external_source_refuses_without_generating():
    chain, llm, _ = crag(corpus("Cats sleep a lot.", "Dogs bark."))
    res = chain.answer("What is the capital of France?")
    assert res.action == INCORRECT and res.answer == REFUSAL and res.refused
    assert res.citations == [] and res.context.passages == []
    assert llm.generated == []  # never an answer from documents judged irrelevant


def test_incorrect_uses_the_external_source_with_a_rewritten_query():
    asked = []

    def web(query, k):
        asked.append((query, k))
        return [Document(text="Paris is the capital of France.", id="web1")]

    chain, _llm, _ = crag(corpus("Cats sleep a lot."), external=web, external_k=2)
    res = chain.answer("What is the capital city of France?")
    assert res.action == INCORRECT and res.answer == "Paris [1]."
    assert asked == [("France capital city", 2)]
    assert res.context.rewritten_query == "France capital city"
    assert res.citations[0].id == "web1" and res.citations[0].metadata["external"]
    assert all("Cats" not in p.text for p in res.context.passages)


def test_external_documents_are_refined_with_their_own_strip_mode():
    page = "Cats sleep a lot. Paris is the capital of France. Dogs bark."

    def web(query, k):
        return [Document(text=page, id="web1"), Document(text="Cats purr.", id="web2")]

    whole, _, ev = crag(corpus("Cats sleep a lot."), external=web, strip_sentences=1)
    ctx = whole.answer("What is the capital of France?").context
    assert whole.config.external_strips == "passage"
    assert [s.text for s in ctx.strips] == [page, "Cats purr."]
    assert [p.id for p in ctx.passages] == ["web1"] and ctx.passages[0].text == page
    assert ev.calls == [1, 2]  # the internal document, then both external passages
    cut, _, _ = crag(corpus("Cats sleep a lot."), external=web, strip_sentences=1,
                     external_strips=None)
    ctx = cut.answer("What is the capital of France?").context
    assert ctx.passages[0].text == "Paris is the capital of France."
    with pytest.raises(InputError, match="external_strips"):
        CRAGConfig(external_strips="pages").validate()


def test_ambiguous_keeps_internal_documents_beside_external_ones():
    web = corpus("Paris is the capital of France.")
    chain, _, _ = crag(corpus("France is in Europe."), external=web, rewrite="none")
    res = chain.answer("What is the capital of France?")
    assert res.action == AMBIGUOUS
    assert [p.metadata["external"] for p in res.context.passages] == [False, True]
    # an external document below the floor is not added beside internal context ...
    noise = corpus("Cats sleep a lot.")
    chain, _, _ = crag(corpus("France is in Europe."), external=noise, rewrite="none")
    ctx = chain.answer("What is the capital of France?").context
    assert [p.text for p in ctx.passages] == ["France is in Europe."]
    assert ctx.external_documents[0].text == "Cats sleep a lot."  # fetched, scored, dropped
    # ... but on Incorrect it is all there is: the best one is kept, the generator judges
    chain, _, _ = crag(corpus("Dogs bark."), external=noise, rewrite="none")
    res = chain.answer("What is the capital of France?")
    assert res.action == INCORRECT and [p.text for p in res.context.passages] == [
        "Cats sleep a lot."]


def test_external_timeout_and_errors_are_recorded_not_raised():
    release = threading.Event()

    def slow(query, k):
        release.wait(5)
        return []

    chain, llm, _ = crag(corpus("Cats sleep."), external=slow, external_timeout=0.2)
    started = time.perf_counter()
    res = chain.answer("What is the capital of France?")
    release.set()
    assert time.perf_counter() - started < 2
    assert "did not answer within 0.2 s" in res.context.external_error
    assert res.refused and llm.generated == []

    def broken(query, k):
        raise ConnectionError("no network")

    chain, _, _ = crag(corpus("Cats sleep."), external=broken)
    assert "ConnectionError: no network" in chain.answer("Capital of France?") \
        .context.external_error


def test_a_failing_retriever_raises_a_typed_error():
    def broken(query, k):
        raise OSError("disk gone")

    chain, _, _ = crag(broken)
    with pytest.raises(ChainError, match="retriever failed: OSError: disk gone"):
        chain.answer("Where?")
    with pytest.raises(InputError, match="empty"):
        chain.answer("  ")
    with pytest.raises(InputError, match="list of questions"):
        chain.answer_many("one question")
    empty, _, _ = crag(lambda q, k: [])
    assert empty.answer("Where is Paris?").action == INCORRECT


def test_answer_many_batches_evaluator_and_generator():
    chain, llm, ev = crag(corpus("Paris is the capital of France.", "Dogs bark."),
                          strips="passage")
    out = chain.answer_many(["Capital of France?", "Where is Paris?", "Dogs?"])
    assert [r.answer for r in out] == ["Paris [1]."] * 3
    assert ev.calls == [6]  # one pass over 3 x 2 documents; passage strips reuse scores
    assert len(llm.generated) == 3
    assert chain.answer_many([]) == []


def test_calibration_picks_trustworthy_thresholds():
    scores = [0.05, 0.1, 0.15, 0.3, 0.45, 0.5, 0.6, 0.7, 0.9, 0.95]
    truth = [False, False, False, False, True, False, True, True, True, True]
    got = calibrate_thresholds(scores, truth, precision=0.9)
    assert got["lower"] == pytest.approx(0.375)  # below it: all four without the answer
    assert got["upper"] == pytest.approx(0.55)  # above it: all with the answer
    assert got["ambiguous_share"] == pytest.approx(0.2)
    assert got["decided_accuracy"] == 1.0
    with pytest.raises(InputError, match="with and without"):
        calibrate_thresholds([0.1, 0.2], [True, True])
    chain, _, _ = crag(corpus("x"))
    items = [{"question": f"q{i}", "documents": ["Paris" if h else "cats"], "has_answer": h}
             for i, h in enumerate([True, False, True, False])]
    result = chain.calibrate(items)
    assert chain.config.lower <= chain.config.upper
    assert chain.config.calibration["n"] == 4 and result["decided_accuracy"] == 1.0
    with pytest.raises(InputError, match="has_answer"):
        chain.calibrate([{"question": "q", "documents": ["x"]}])


def test_default_thresholds_are_the_shipped_calibration():
    from expertrag.chains.corrective import SHIPPED_CALIBRATION

    cfg = CRAGConfig()
    assert (cfg.upper, cfg.lower) == (SHIPPED_CALIBRATION["upper"], SHIPPED_CALIBRATION["lower"])
    assert cfg.calibration == SHIPPED_CALIBRATION and cfg.calibration is not SHIPPED_CALIBRATION
    assert CRAGConfig.from_dict(cfg.to_dict()) == cfg


def test_config_round_trips_and_validates(tmp_path):
    cfg = CRAGConfig(upper=0.7, lower=0.1, strips="words", calibration={"n": 3})
    path = cfg.save(tmp_path / "crag.json")
    assert CRAGConfig.load(path) == cfg
    with pytest.raises(InputError, match="lower <= upper"):
        CRAGConfig(upper=0.1, lower=0.5).validate()
    with pytest.raises(InputError, match="strips"):
        CRAGConfig(strips="pages").validate()
    with pytest.raises(InputError, match="unknown"):
        CRAGConfig.from_dict({"upper": 0.5, "colour": "red"})
    (tmp_path / "bad.json").write_text("[1]")
    with pytest.raises(InputError, match="not a JSON object"):
        CRAGConfig.load(tmp_path / "bad.json")


def test_sources_of_every_shape():
    doc = Document(text="x")

    class Store:
        def query(self, text, k=4):
            return [doc] * k

    class Web:
        def search(self, query, k):
            return ["a result"]

    assert as_retrieve(Store())("q", 2) == [doc, doc]
    assert call_source(as_retrieve(Web()), "q", 1, "web")[0].text == "a result"
    assert as_retrieve(lambda q: [doc, doc, doc])("q", 2) == [doc, doc]
    with pytest.raises(InputError, match="callable"):
        as_retrieve(42)
    with pytest.raises(ChainError, match="not a list"):
        call_source(lambda q, k: "oops", "q", 1, "web")
    with pytest.raises(SourceTimeoutError):
        call_source(lambda q, k: time.sleep(1), "q", 1, "web", timeout=0.05)


def test_keywords_without_a_model():
    assert keywords("What nationality was James Henry Miller's wife?") == \
        "James Henry Miller nationality wife"
    assert keywords('When did "Blue Moon" come out?') == "Blue Moon come out"
    assert len(keywords("what is it about then").split()) <= 3


# ------------------------------------------------------------------------------ Self-RAG
class FakeCritic:
    """Fixed judgements: relevant/supported when the passage or answer mentions Paris."""

    def __init__(self, retrieve_yes: float = 0.3) -> None:
        self.retrieve_yes = retrieve_yes
        self.asked: dict[str, int] = {}

    def judge(self, kind, items):
        self.asked[kind] = self.asked.get(kind, 0) + len(items)
        out = []
        for it in items:
            if kind == RETRIEVE:
                probs = {"yes": self.retrieve_yes, "no": 1 - self.retrieve_yes}
            elif kind == ISREL:
                p = 0.9 if "Paris" in it["passage"] else 0.2
                probs = {"relevant": p, "irrelevant": 1 - p}
            elif kind == ISSUP:
                good = "Paris" in it["answer"] and "Paris" in it["passage"]
                probs = ({"fully": 0.7, "partially": 0.2, "no": 0.1} if good
                         else {"fully": 0.1, "partially": 0.1, "no": 0.8})
            else:
                good = "Paris" in it["answer"]
                probs = ({"5": 0.6, "4": 0.2, "3": 0.1, "2": 0.05, "1": 0.05} if good
                         else {"5": 0.0, "4": 0.1, "3": 0.1, "2": 0.7, "1": 0.1})
            out.append(Judgement(kind, probs))
        return out


def selfrag(retriever, critic=None, **config):
    llm = FakeLLM()
    critic = critic or FakeCritic()
    return SelfRAG(llm, retriever, critic=critic, config=SelfRAGConfig(**config)), llm, critic


def test_self_rag_scores_candidates_with_the_paper_weights():
    chain, _llm, critic = selfrag(corpus("Dogs bark.", "Paris is the capital of France.",
                                        "Cats sleep."), k=3, candidates=None)
    res = chain.answer("What is the capital of France?")
    assert res.retrieved and res.retrieve_probability == pytest.approx(0.3)
    best = res.candidates[res.best]
    assert best.text == "Paris [1]." and res.citations[0].id == "d1"
    # 1 * IsRel + 1 * (p_full + 0.5 p_partial) + 0.5 * sum(w_i p_i)
    use = 1.0 * 0.6 + 0.5 * 0.2 + 0 * 0.1 - 0.5 * 0.05 - 1.0 * 0.05
    assert best.score == pytest.approx(0.9 + (0.7 + 0.5 * 0.2) + 0.5 * use)
    refusal = next(c for c in res.candidates if c.passages[0].id == "d0")
    assert refusal.score == pytest.approx(0.2 + (0.1 + 0.05) + 0.5 * (0.05 - 0.35 - 0.1))
    assert len(res.candidates) == 3 + 1  # one per passage + the joint top-2 candidate
    assert critic.asked == {RETRIEVE: 1, ISREL: 3, ISSUP: 4, ISUSE: 4}
    assert res.calls["generator"] == 4


def test_retrieve_threshold_is_applied_to_probabilities():
    chain, _llm, _ = selfrag(corpus("Paris is the capital of France."),
                            critic=FakeCritic(retrieve_yes=0.15))
    res = chain.answer("Write a poem about the sea.")
    assert not res.retrieved and res.answer == "A poem about the sea."
    assert res.candidates[0].passages == [] and res.citations == []
    forced, _, _ = selfrag(corpus("Paris is the capital of France."),
                           critic=FakeCritic(retrieve_yes=0.15), always_retrieve=True)
    assert forced.answer("Capital of France?").retrieved


def test_self_rag_logprob_term_and_candidate_cap():
    chain, _llm, _critic = selfrag(corpus("Paris a.", "Paris b.", "Paris c.", "Dogs."), k=4,
                                 candidates=2, joint_candidate=False, use_logprob=True,
                                 w_logprob=2.0)
    res = chain.answer("Capital of France?")
    assert len(res.candidates) == 2
    c = res.candidates[0]
    assert c.score == pytest.approx(c.isrel + c.issup + 0.5 * c.isuse + 2.0 * -0.5)


def test_long_form_beam_is_bounded():
    chain, llm, _critic = selfrag(corpus("Paris is the capital.", "France is big.", "Dogs."),
                                 mode="long", beam_width=2, max_depth=3, candidates=2, k=3)
    res = chain.answer("Tell me about Paris.")
    # depth 1: 1 beam x 2 passages; later depths at most 2 beams x 2 passages each
    assert llm.generated and len(llm.generated) <= 2 + 2 * 2 * 2
    assert res.candidates[res.best].text.startswith("Paris [1].")
    assert "It is in France." in res.candidates[res.best].text


def test_self_rag_candidates_are_greedy_unless_asked():
    seen = []

    class Recording(FakeLLM):
        def generate(self, convs, expert=None, max_new_tokens=64, **kwargs):
            seen.append(kwargs.get("num_beams", "unset"))
            return super().generate(convs, expert=expert, max_new_tokens=max_new_tokens,
                                    **kwargs)

    docs = corpus("Paris is the capital of France.", "Dogs.")
    for beams, sent in ((1, 1), (3, 3), (None, "unset")):  # None: the expert's own setting
        seen.clear()
        chain = SelfRAG(Recording(), docs, critic=FakeCritic(),
                        config=SelfRAGConfig(k=2, num_beams=beams))
        assert chain.answer("Capital of France?").answer == "Paris [1]."
        assert seen and set(seen) == {sent}


def test_self_rag_rejects_bad_settings():
    with pytest.raises(InputError, match="num_beams"):
        SelfRAGConfig(num_beams=0).validate()
    with pytest.raises(InputError, match="use_logprob"):
        SelfRAGConfig(num_beams=3, use_logprob=True).validate()
    with pytest.raises(InputError, match="retrieve_threshold"):
        SelfRAGConfig(retrieve_threshold=1.5).validate()
    with pytest.raises(InputError, match="mode"):
        SelfRAGConfig(mode="medium").validate()
    with pytest.raises(InputError, match="critic"):
        SelfRAG(FakeLLM(), corpus("x"), critic=object())


def test_native_reflection_tokens_on_a_tiny_model():
    from tiny_models import tiny_llm

    llm = tiny_llm()
    assert not has_reflection_tokens(llm.tokenizer)
    with pytest.raises(InputError, match="reflection tokens"):
        NativeCritic(llm)
    tokens = [t for group in NATIVE_TOKENS.values() for t in group]
    llm.tokenizer.add_special_tokens({"additional_special_tokens": tokens})
    llm.base_model.resize_token_embeddings(len(llm.tokenizer))
    assert has_reflection_tokens(llm.tokenizer)
    critic = NativeCritic(llm)
    prompt = critic.prompt(ISSUP, "Who?", "A passage.", "Bob")
    assert prompt.startswith("### Instruction:\nWho?\n\n### Response:\n[Retrieval]<paragraph>")
    assert prompt.endswith("</paragraph>[Relevant]Bob")
    for kind in (RETRIEVE, ISREL, ISSUP, ISUSE):
        (j,) = critic.judge(kind, [{"question": "Who?", "passage": "A passage.",
                                    "answer": "Bob"}])
        assert set(j.probs) == set(LABELS[kind])
        assert math.isclose(sum(j.probs.values()), 1.0, rel_tol=1e-5)
    chain = SelfRAG(llm, corpus("A passage."), config=SelfRAGConfig(expert=None))
    assert isinstance(chain.critic, NativeCritic)  # chosen by the vocabulary


def test_no_strip_passing_the_floor_keeps_the_best_document_whole():
    chain, _, _ = crag(corpus("Dogs bark. France is in Europe. It is big.", "Cats purr."),
                       strip_sentences=1, strip_floor=0.5)
    res = chain.answer("Where is France?")
    assert res.action == AMBIGUOUS
    (passage,) = res.context.passages
    assert passage.id == "d0" and passage.text == "Dogs bark. France is in Europe. It is big."
    assert passage.metadata["crag_strips"] == [0, 1, 2]


def test_doc_floor_and_score_order_shape_the_recomposed_context():
    docs = corpus("Cats sleep a lot.", "France has a king once.", "Paris is the capital of France.")
    # by default only documents at or above `lower` (0.3) are refined: doc 0 (0.05) is not
    chain, _, _ = crag(docs, k=3, strips="passage", strip_floor=0.0)
    assert [p.id for p in chain.answer("Capital of France?").context.passages] == ["d1", "d2"]
    # doc_floor=0 refines every retrieved document; the action still follows `lower`/`upper`
    chain, _, _ = crag(docs, k=3, strips="passage", strip_floor=0.0, doc_floor=0.0)
    res = chain.answer("Capital of France?")
    assert res.action == CORRECT
    assert [p.id for p in res.context.passages] == ["d0", "d1", "d2"]  # retrieval order
    chain, _, _ = crag(docs, k=3, strips="passage", strip_floor=0.0, doc_floor=0.0,
                       order="best-first")
    passages = chain.answer("Capital of France?").context.passages
    assert [p.id for p in passages] == ["d2", "d1", "d0"]  # best evaluator score first
    assert [p.score for p in passages] == [0.9, 0.4, 0.05]
    chain.config = CRAGConfig(**{**chain.config.to_dict(), "order": "best-last"})
    passages = chain.answer("Capital of France?").context.passages
    assert [p.id for p in passages] == ["d0", "d1", "d2"]  # the best next to the question
    # an irrelevant corpus is still Incorrect (and refused) whatever the doc floor
    chain, llm, _ = crag(corpus("Cats sleep.", "Dogs bark."), doc_floor=0.0)
    assert chain.answer("Capital of France?").refused and not llm.generated
    with pytest.raises(InputError, match="order"):
        CRAGConfig(order="random").validate()
    with pytest.raises(InputError, match="doc_floor"):
        CRAGConfig(doc_floor=float("nan")).validate()


BRIDGE_OWN = {"built": 0.9, "born": 0.5, "stands": 0.3}


class BridgeEvaluator:
    """Scores a passage alone by keyword, and a pair (best + newline + other) by whether the
    other part holds the bridge fact: what pair-aware selection reads."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, str]] = []

    def score_pairs(self, pairs):
        self.pairs.extend(pairs)
        out = []
        for _, text in pairs:
            if "\n" in text:
                out.append(0.95 if "Paris" in text.split("\n", 1)[1] else 0.1)
            else:
                out.append(next((v for k, v in BRIDGE_OWN.items() if k in text), 0.05))
        return out


def test_pair_aware_selection_keeps_the_partner_the_best_passage_needs():
    from expertrag.chains.corrective import Strip, ranked_strips

    docs = corpus("The tower was built by Gustave Eiffel.", "Gustave Eiffel was born in Dijon.",
                  "The tower stands in Paris.", "Cats sleep.")
    question = "In which city does the tower Gustave Eiffel built stand?"

    def chain(**config):
        ev = BridgeEvaluator()
        cfg = CRAGConfig(upper=0.8, lower=0.3, strips="passage", strip_floor=0.0,
                         doc_floor=0.0, k=4, **config)
        return CorrectiveRAG(FakeLLM(), docs, evaluator=ev, config=cfg), ev

    by_score, ev = chain(max_strips=2)
    res = by_score.answer(question)
    assert [p.id for p in res.context.passages] == ["d0", "d1"]  # "born" outscores "stands"
    assert len(ev.pairs) == 4 and res.calls["evaluator"] == 4  # no pair rows
    by_pair, ev = chain(max_strips=2, select="pair")
    res = by_pair.answer(question)
    # logit(0.3) + logit(0.95) = 2.10 beats logit(0.5) + logit(0.1) = -2.20
    assert [p.id for p in res.context.passages] == ["d0", "d2"]
    assert ev.pairs[4:] == [(question, docs(question, 4)[0].text + "\n" + docs(question, 4)[i].text)
                            for i in (1, 2, 3)]  # the best with each other passage, one pass
    assert res.calls["evaluator"] == 7 and res.forward_calls == 8
    assert [s.joint for s in res.context.strips] == [None, 0.1, 0.95, 0.1]
    assert res.action == CORRECT and res.citations[0].id == "d0"
    # external knowledge is selected the same way (Incorrect: the external source alone)
    ev = BridgeEvaluator()
    cfg = CRAGConfig(upper=0.8, lower=0.3, strips="passage", strip_floor=0.0, doc_floor=0.0,
                     k=1, external_k=4, max_strips=2, select="pair")
    res = CorrectiveRAG(FakeLLM(), corpus("Cats sleep."), evaluator=ev, external=docs,
                        config=cfg).answer(question)
    assert res.action == INCORRECT
    assert [p.id for p in res.context.passages] == ["d0", "d2"]
    assert all(p.metadata["external"] for p in res.context.passages)
    # every passing strip fits the budget: nothing to choose, so no pair rows
    all_kept, ev = chain(max_strips=4, select="pair")
    assert len(all_kept.answer(question).context.passages) == 4 and len(ev.pairs) == 4
    # the rule itself, and its typed error when a candidate lacks its joint score
    strips = [Strip("a", 0, 0, 0.9), Strip("b", 1, 0, 0.6, joint=0.2),
              Strip("c", 2, 0, 0.4, joint=0.9), Strip("d", 3, 0, 0.01, joint=0.99)]
    assert [s.text for s in ranked_strips(strips, 0.0, "pair", 2)] == ["a", "c"]
    assert [s.text for s in ranked_strips(strips, 0.0, "score", 2)] == ["a", "b"]
    assert [s.text for s in ranked_strips(strips, 0.05, "pair")] == ["a", "b", "c"]
    strips[2].joint = None
    with pytest.raises(InputError, match="strip 0 of source 2"):
        ranked_strips(strips, 0.0, "pair", 2)
    with pytest.raises(InputError, match="select"):
        CRAGConfig(select="best").validate()
    assert CRAGConfig.from_dict(CRAGConfig(select="pair").to_dict()).select == "pair"
