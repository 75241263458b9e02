"""The hop expert's prompts and training rows, and MultiHopRAG's loop with a fake model (the
bridge found at hop 2, bounds, batching, streaming, failures) and on a tiny random model."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar

import pytest

from expertrag.chains.base import ChainError
from expertrag.chains.multihop import (
    MultiHopConfig,
    MultiHopContext,
    MultiHopRAG,
    MultiHopResult,
    name_finder,
)
from expertrag.errors import ConfigKeyError, InputError
from expertrag.experts.grounded_qa import REFUSAL
from expertrag.experts.hop import (
    MAX_QUERY_CHARS,
    NEXT_QUERY_SCHEMA,
    capitalized_names,
    choose_query,
    format_evidence,
    keep_messages,
    lookahead_candidates,
    next_messages,
    parse_query,
    render_query,
    stop_messages,
    title_query,
)
from expertrag.training.hop_data import build_hop, hop_item_rows, hop_order
from expertrag.types import Document

# ------------------------------------------------------------------------------ prompts


def test_prompts_hold_question_query_and_numbered_evidence():
    keep = keep_messages("Where was X born?", "Jane Roe", "Jane Roe was born in Lyon.")
    assert keep[0]["role"] == "user"
    assert "Looking for: Jane Roe" in keep[0]["content"] and "Lyon" in keep[0]["content"]
    stop = stop_messages("Where was X born?", ["First.", "Second."])[0]["content"]
    assert "[1] First.\n[2] Second." in stop and stop.endswith("Answer yes or no.")
    assert "(none)" in next_messages("Where was X born?", [])[0]["content"]
    long = format_evidence(["word " * 400])
    assert len(long) < 720 and long.endswith("...")


@pytest.mark.parametrize("call", [
    lambda: keep_messages("", "q", "p"),
    lambda: keep_messages("q", "  ", "p"),
    lambda: stop_messages("q", "one string"),
    lambda: stop_messages("q", ["ok", ""]),
    lambda: parse_query('""'),
    lambda: parse_query("   "),
])
def test_bad_prompt_input_is_an_input_error(call):
    with pytest.raises(InputError):
        call()


def test_queries_render_and_parse_back_bounded():
    assert render_query("  Jane   Roe ") == '"Jane Roe"'
    assert parse_query('"Jane Roe"') == "Jane Roe"
    assert parse_query("Jane Roe") == "Jane Roe"  # unconstrained output taken as text
    assert parse_query(json.dumps("x" * 300)) == "x" * MAX_QUERY_CHARS
    assert title_query("Elephant (2003 film)") == "Elephant"
    assert title_query("(film)") == "(film)"


# ------------------------------------------------------------------------------ rows


def hotpot(i: int, question: str, gold: list[tuple[str, str]], kind: str = "bridge",
           distractors: int = 3) -> dict:
    titles = [t for t, _ in gold] + [f"Other {i}-{j}" for j in range(distractors)]
    sentences = [[s] for _, s in gold] + [[f"Other {i}-{j} is a town {j}."]
                                          for j in range(distractors)]
    return {"id": f"h{i}", "question": question, "answer": "Lyon", "type": kind,
            "supporting_facts": {"title": [t for t, _ in gold], "sent_id": [0, 0]},
            "context": {"title": titles, "sentences": sentences}}


BRIDGE = hotpot(0, "Where was the director of Blue Film born?",
                [("Jane Roe (director)", "Jane Roe is a director born in Lyon."),
                 ("Blue Film", "Blue Film is a 1999 drama directed by Jane Roe.")])


def test_hop_order_follows_the_question_then_the_link():
    first, second = hop_order(BRIDGE["question"], [
        ("Jane Roe (director)", "Jane Roe is a director born in Lyon."),
        ("Blue Film", "Blue Film is a 1999 drama directed by Jane Roe.")])
    assert (first[0], second[0]) == ("Blue Film", "Jane Roe (director)")
    # the question names neither: the paragraph naming the other's title comes first
    first, _ = hop_order("Where was the director of that film born?", [
        ("Jane Roe", "Jane Roe was born in Lyon."), ("Blue Film", "Directed by Jane Roe.")])
    assert first[0] == "Blue Film"
    # a comparison names both: the one named first
    first, _ = hop_order("Is Lyon or Paris bigger?", [("Paris", "P."), ("Lyon", "L.")])
    assert first[0] == "Lyon"
    assert hop_order("Which one?", [("A", "About B."), ("B", "About A.")]) is None


def test_item_rows_label_each_kind():
    rows = hop_item_rows([BRIDGE], 0, seed=3)
    by = {}
    for r in rows:
        by.setdefault(r["meta"]["kind"], []).append(r)
    assert [r["answer"] for r in by["keep"]] == ["yes", "no", "yes", "no"]
    assert "Looking for: Jane Roe\n" in by["keep"][2]["messages"][0]["content"]
    assert [r["answer"] for r in by["stop"]] == ["yes", "yes", "no", "no"]
    assert {r["answer"] for r in by["next"]} == {'"Jane Roe"'}
    assert all("Blue Film is a 1999" in r["messages"][0]["content"] for r in by["next"])
    # no order: keep and stop rows only
    unordered = hotpot(1, "Which one?", [("A", "About B."), ("B", "About A.")])
    assert {r["meta"]["kind"] for r in hop_item_rows([unordered], 0)} == {"keep", "stop"}


def test_a_third_next_row_holds_the_first_hop_among_two_distractors():
    two = hop_item_rows([BRIDGE], 0, seed=3)
    three = hop_item_rows([BRIDGE], 0, seed=3, next_rows=3)
    assert three[:len(two)] == two  # the earlier rows do not change
    extra = three[len(two):]
    assert [r["meta"]["evidence"] for r in extra] == ["first+2 distractors"]
    text = extra[0]["messages"][0]["content"]
    assert "Blue Film is a 1999" in text and "[3] " in text and extra[0]["answer"] == '"Jane Roe"'
    only = [r for r in hop_item_rows([BRIDGE], 0, seed=3, next_rows=1)
            if r["meta"]["kind"] == "next"]
    assert [r["meta"]["evidence"] for r in only] == ["first"]
    assert len(build_hop([BRIDGE], seed=1, next_rows=3)) == len(build_hop([BRIDGE], seed=1)) + 1
    with pytest.raises(InputError, match="next_rows"):
        hop_item_rows([BRIDGE], 0, next_rows=4)


def test_build_hop_is_deterministic_capped_and_borrows_distractors():
    items = [BRIDGE, hotpot(1, "Is Lyon bigger than Paris?", [("Lyon", "Lyon is big."),
                                                            ("Paris", "Paris is big.")],
                            kind="comparison", distractors=0)]
    rows = build_hop(items, seed=1)
    assert rows == build_hop(items, seed=1) and rows != build_hop(items, seed=2)
    assert len(build_hop(items, seed=1, caps={"keep": 3})) == len(rows) - 5
    borrowed = [r for r in rows if r["meta"]["index"] == 1 and r["answer"] == "no"
                and r["meta"]["kind"] == "keep"]
    assert borrowed and all(r["meta"]["title"] not in ("Lyon", "Paris") for r in borrowed)
    with pytest.raises(InputError):
        build_hop(items, caps={"hops": 1})


# ------------------------------------------------------------------------------ the chain

DOCS = [
    Document(text="Blue Film is a 1999 drama directed by Jane Roe.", id="film"),
    Document(text="Blue Film won a prize for its drama in 2000.", id="prize"),
    Document(text="Jane Roe is a director born in Lyon.", id="roe"),
    Document(text="The 1999 drama season had many films.", id="season"),
]


def overlap_retriever(docs=DOCS):
    """Top k by shared words (ties in corpus order): the question alone misses ``roe``."""
    def retrieve(query: str, k: int) -> list[Document]:
        words = set(re.findall(r"\w+", query.lower()))
        scored = sorted(docs, key=lambda d: -len(words & set(re.findall(r"\w+",
                                                                         d.text.lower()))))
        return scored[:k]
    return retrieve


@dataclass
class Result:
    text: str
    completion_tokens: int = 2
    finish_reason: str = "stop"
    parsed: object = None


class FakeHopLLM:
    """keep: P(yes) 0.9 when the passage shares a capitalised word with the hop's query;
    stop: 0.9 once the evidence says where someone was born; next: the director the
    evidence names; answer: "Lyon [n]." citing the passage that says so."""

    experts: ClassVar[list[str]] = ["hop", "grounded-qa"]

    def __init__(self, stop_never: bool = False, next_query: str | None = None) -> None:
        self.label_calls: list[int] = []
        self.generate_calls: list[tuple[str, int, object]] = []
        self.stop_never = stop_never
        self.next_query = next_query
        self.counter = 0

    def label_probabilities(self, batch, labels=("yes", "no"), expert=None, **kw):
        assert labels == ("yes", "no") and expert == "hop"
        self.label_calls.append(len(batch))
        out = []
        for conv in batch:
            text = conv[0]["content"]
            if text.startswith("Question:") and "Looking for:" in text:
                query = text.split("Looking for: ")[1].split("\n")[0]
                passage = text.split("Passage:\n")[1]
                names = {w for w in re.findall(r"[A-Z]\w+", query)} - {"Where", "Who"}
                p = 0.9 if names & set(re.findall(r"[A-Z]\w+", passage)) else 0.1
            else:
                p = 0.1 if self.stop_never or "born in" not in text else 0.9
            out.append({"yes": p, "no": 1 - p})
        return out

    def generate(self, convs, expert=None, max_new_tokens=64, **kw):
        self.generate_calls.append((expert, len(convs), kw.get("json_schema")))
        out = []
        for conv in convs:
            text = conv[0]["content"]
            if kw.get("json_schema") is not None:
                assert kw["json_schema"] == NEXT_QUERY_SCHEMA and expert == "hop"
                if self.next_query is not None:
                    query = self.next_query
                elif self.stop_never:
                    self.counter += 1
                    query = f"query {self.counter}"
                else:
                    m = re.search(r"directed by ([A-Z]\w+ [A-Z]\w+)", text)
                    query = m.group(1) if m else "nothing"
                out.append(Result(json.dumps(query), parsed=query))
            else:
                m = re.search(r"\[(\d+)\][^\[]*born in Lyon", text)
                out.append(Result(f"Lyon [{m.group(1)}]." if m else REFUSAL))
        return out

    def stream(self, conv, expert=None, max_new_tokens=64, **kw):
        (final,) = self.generate([conv], expert=expert)

        @dataclass
        class Chunk:
            text: str
            final: object = None

        yield Chunk(final.text)
        yield Chunk("", final)


QUESTION = "Where was the director of Blue Film born?"


def chain(llm=None, retriever=None, **cfg) -> tuple[MultiHopRAG, FakeHopLLM]:
    llm = llm or FakeHopLLM()
    config = MultiHopConfig(**{"k": 2, "assemble": "evidence", **cfg})
    return MultiHopRAG(llm, retriever or overlap_retriever(), config), llm


def test_the_bridge_paragraph_is_found_at_hop_two_and_cited():
    rag, _ = chain()
    assert "roe" not in {d.id for d in overlap_retriever()(QUESTION, 2)}  # one step misses it
    result = rag.answer(QUESTION)
    assert isinstance(result, MultiHopResult)
    assert [h.query for h in result.hops] == [QUESTION, "Jane Roe"]
    assert result.hops[0].next_query == "Jane Roe" and result.hops[0].stop_probability == 0.1
    assert [d.id for d in result.context.evidence] == ["film", "prize", "roe"]
    assert result.context.stopped == "enough" and result.hops[1].stop_probability == 0.9
    assert result.answer == "Lyon [3]." and [d.id for d in result.citations] == ["roe"]
    assert not result.refused and result.forward_calls > 0
    assert set(result.seconds) >= {"retrieve", "keep", "stop", "next", "generate"}


def test_passages_seen_at_an_earlier_hop_are_not_retrieved_again():
    rag, _ = chain(k=3)
    hops = rag.retrieve(QUESTION).hops
    first = {d.id for d in hops[0].retrieved}
    assert first.isdisjoint({d.id for d in hops[1].retrieved})


def test_each_hop_gets_k_new_passages_and_can_search_with_the_question():
    asked: list[tuple[str, int]] = []

    def repeats_itself(query: str, k: int) -> list[Document]:
        asked.append((query, k))
        return DOCS[:k]  # the same order whatever the query: hop 2 must go past hop 1's

    rag, _ = chain(retriever=repeats_itself, k=2, max_hops=2,
                   search_with_question=True)
    hops = rag.retrieve(QUESTION).hops
    assert [d.id for d in hops[0].retrieved] == ["film", "prize"]
    assert [d.id for d in hops[1].retrieved] == ["roe", "season"]
    assert asked == [(QUESTION, 2), (f"Jane Roe {QUESTION}", 4)]
    assert hops[1].query == "Jane Roe"  # the hop's query (the keep prompt's) stays the expert's
    with pytest.raises(InputError, match="search_with_question"):
        MultiHopConfig(search_with_question="yes").validate()


def test_max_hops_is_a_hard_bound_and_a_repeated_query_ends_the_loop():
    rag, llm = chain(FakeHopLLM(stop_never=True), max_hops=3)
    ctx = rag.retrieve(QUESTION)
    assert len(ctx.hops) == 3 and ctx.stopped == "max_hops"
    assert ctx.hops[-1].stop_probability is None and ctx.hops[-1].next_query is None
    assert len([c for c in llm.generate_calls if c[2] is not None]) == 2
    rag, _ = chain(FakeHopLLM(stop_never=True, next_query=QUESTION.upper()))
    ctx = rag.retrieve(QUESTION)
    assert len(ctx.hops) == 1 and ctx.stopped == "repeated_query"


def test_each_step_is_one_batched_call_across_questions():
    rag, llm = chain()
    results = rag.answer_many([QUESTION, QUESTION.replace("Where", "In which city"),
                               "Who won a prize in 2000?"])
    assert len(results) == 3
    # hop 1: one keep pass (3 x 2 pairs), one stop pass, one lookahead pass; hop 2: one keep
    # and one stop pass for those going
    assert llm.label_calls[0] == 6 and len(llm.label_calls) == 5
    answers = [c for c in llm.generate_calls if c[2] is None]
    assert answers == [("grounded-qa", 3, None)]
    assert results[0].answer == "Lyon [3]." and results[2].hops[0].query.startswith("Who")


def test_generations_run_in_batches_of_similar_length_and_keep_the_order():
    questions = [QUESTION, "Who won a prize in 2000?" + " Really?" * 30,
                 QUESTION.replace("Where", "In which city"), "Who won a prize in 2000?"]
    rag, llm = chain(batch_size=2)
    results = rag.answer_many(questions)
    answers = [c for c in llm.generate_calls if c[2] is None]
    assert answers == [("grounded-qa", 2, None), ("grounded-qa", 2, None)]
    assert [r.question for r in results] == questions
    assert results[0].answer == "Lyon [3]."
    alone, _ = chain()
    assert [r.answer for r in results] == [r.answer for r in alone.answer_many(questions)]


def test_each_question_can_search_its_own_source_in_one_batch():
    other = [Document(id="x1", text="Paris is a city in France."),
             Document(id="x2", text="Blue Film is a film about the sea.")]
    seen: list[str] = []

    def own(query: str, k: int) -> list[Document]:
        seen.append(query)
        return other[:k]

    rag, llm = chain(retriever=lambda q, k: pytest.fail("the chain's retriever was used"))
    results = rag.answer_many([QUESTION, QUESTION], sources=[overlap_retriever(), own])
    assert results[0].answer == "Lyon [3]."
    assert {d.id for h in results[1].hops for d in h.retrieved} <= {"x1", "x2"}
    assert seen and results[1].answer == REFUSAL
    assert llm.label_calls[0] == 4  # both questions' passages in one keep pass
    contexts = rag.retrieve_many([QUESTION], sources=[own])
    assert {d.id for d in contexts[0].passages} <= {"x1", "x2"}
    with pytest.raises(InputError, match="one source per question"):
        rag.answer_many([QUESTION, QUESTION], sources=[own])
    with pytest.raises(InputError, match=r"sources\[1\]"):
        rag.answer_many([QUESTION, QUESTION], sources=[own, 42])


def test_generate_sorted_pairs_each_result_with_its_conversation():
    from expertrag.chains.base import generate_sorted

    class Echo:
        def __init__(self) -> None:
            self.batches: list[list[str]] = []

        def generate(self, convs, **kw):
            self.batches.append([c[0]["content"] for c in convs])
            return [c[0]["content"].upper() for c in convs]

    texts = ["ccc", "a", "bbbbb", "dd", "e"]
    echo = Echo()
    out = generate_sorted(echo, [[{"role": "user", "content": t}] for t in texts], 2)
    assert out == [t.upper() for t in texts]
    assert echo.batches == [["a", "e"], ["dd", "ccc"], ["bbbbb"]]
    with pytest.raises(InputError, match="batch_size"):
        generate_sorted(echo, [], 0)


def test_fill_adds_the_first_hops_unkept_passages_up_to_context_size():
    rag, _ = chain(k=3, assemble="fill", context_size=4, keep_threshold=0.95)
    ctx = rag.retrieve(QUESTION)
    assert len(ctx.evidence) <= len(ctx.passages) <= 4
    assert ctx.passages[:len(ctx.evidence)] == ctx.evidence
    assert {d.id for d in ctx.passages} >= {d.id for d in ctx.hops[0].retrieved[:3]}


def test_displace_keeps_the_first_hop_and_swaps_its_weakest_unkept_for_later_evidence():
    from expertrag.chains.multihop import Hop, assemble

    d = {n: Document(text=f"passage {n}", id=n) for n in "abcdefgh"}
    first = Hop(1, "q", [d["a"], d["b"], d["c"], d["d"], d["e"]], [0.9, 0.1, 0.3, 0.05, 0.2],
                [d["a"]])
    second = Hop(2, "x", [d["f"], d["g"]], [0.8, 0.7], [d["f"], d["g"]])
    assert [x.id for x in assemble([first], 5)] == list("abcde")  # naive RAG's context
    # f and g take the places of d (0.05) and b (0.1); the rest stay in retrieval order
    assert [x.id for x in assemble([first, second], 5)] == list("acefg")
    assert [x.id for x in assemble([first, second], 5, "evidence")] == list("afg")
    assert [x.id for x in assemble([first, second], 5, "fill")] == list("afgbc")
    third = Hop(3, "y", [d["h"]], [0.9], [d["h"]])
    # more later evidence than room: the first hop's kept passage stays, hop order cuts the rest
    assert [x.id for x in assemble([first, second, third], 3)] == list("afg")
    with pytest.raises(InputError, match="assemble"):
        MultiHopConfig(assemble="all").validate()


def test_stream_yields_context_then_text_then_the_result():
    rag, _ = chain()
    events: list[str] = []
    parts = list(rag.stream(QUESTION, listener=lambda e, d: events.append(e)))
    assert isinstance(parts[0], MultiHopContext) and isinstance(parts[-1], MultiHopResult)
    assert "".join(p for p in parts if isinstance(p, str)) == "Lyon [3]."
    assert events[0] == "retrieve_start" and events[-1] == "generate_end"


def test_no_passages_is_a_refusal_without_generating():
    rag, llm = chain(retriever=lambda q, k: [])
    result = rag.answer(QUESTION)
    assert result.refused and result.answer == REFUSAL and result.context.stopped == "no_passages"
    assert llm.generate_calls == []
    parts = list(rag.stream(QUESTION))
    assert parts[1] == REFUSAL and parts[-1].refused


def test_a_failing_source_is_a_chain_error_naming_it():
    def broken(q, k):
        raise ConnectionError("index offline")

    rag, _ = chain(retriever=broken)
    with pytest.raises(ChainError, match="retriever failed: ConnectionError: index offline"):
        rag.answer(QUESTION)


@pytest.mark.parametrize("bad", [{"max_hops": 0}, {"max_hops": 9}, {"k": True},
                                 {"keep_threshold": 1.5}, {"stop_threshold": float("nan")},
                                 {"source_timeout": 0}, {"batch_size": 0},
                                 {"lookahead": -1}, {"lookahead": 11}, {"lookahead": True},
                                 {"lookahead_margin": 2.0}, {"lookahead_names": "regex"}])
def test_bad_settings_are_input_errors(bad):
    with pytest.raises(InputError):
        MultiHopConfig(**bad).validate()


def test_bad_questions_and_config_keys(tmp_path):
    rag, _ = chain()
    with pytest.raises(InputError):
        rag.answer_many(QUESTION)
    with pytest.raises(InputError):
        rag.answer("  ")
    assert rag.answer_many([]) == []
    saved = MultiHopConfig(max_hops=2, keep_threshold=0.3).save(tmp_path / "mh.json")
    assert MultiHopConfig.load(saved) == MultiHopConfig(max_hops=2, keep_threshold=0.3)
    with pytest.raises(ConfigKeyError):
        MultiHopConfig.from_dict({"hops": 2})


def test_on_a_tiny_model_queries_are_bounded_json_strings(tmp_path):
    from tiny_models import save_tiny_lora, tiny_llm

    llm = tiny_llm()
    llm.add_expert("hop", save_tiny_lora(llm, str(tmp_path / "hop"), seed=2))
    llm.add_expert("grounded-qa", save_tiny_lora(llm, str(tmp_path / "qa"), seed=3))
    rag = MultiHopRAG(llm, overlap_retriever(), MultiHopConfig(
        k=2, max_hops=3, stop_threshold=1.0, query_tokens=12, max_new_tokens=8))
    results = rag.answer_many([QUESTION, "Who won a prize in 2000?"])
    for r in results:
        assert 1 <= len(r.hops) <= 3
        for hop in r.hops[:-1]:
            if hop.next_query is not None:
                assert 0 < len(hop.next_query) <= MAX_QUERY_CHARS
        assert all(0.0 <= s <= 1.0 for h in r.hops for s in h.keep_scores)
        assert r.context.passages and isinstance(r.answer, str)


# ------------------------------------------------------------------------------ lookahead

def test_capitalized_names_are_whole_names_in_order_without_sentence_words():
    text = ("Arthur's Magazine (1844-1846) was an American literary periodical published in "
            "Philadelphia. It was edited by T.S. Arthur and Edgar A. Poe. Born in 1902, he "
            "studied at the University of Oxford and moved to New York City in March 1950. "
            "The 19th century ended.")
    assert capitalized_names(text) == [
        "Arthur's Magazine", "American", "Philadelphia", "T.S. Arthur", "Edgar A. Poe",
        "University of Oxford", "New York City"]
    assert capitalized_names("no names here, 1999.") == []


def test_lookahead_candidates_start_with_greedy_and_skip_the_question_and_asked():
    names = ["Ada Lovelace", "Charles Babbage", "Analytical Engine", "Charles  Babbage",
             "London", "Paris"]
    got = lookahead_candidates("Babbage", "Who worked with Ada Lovelace?", names, 4,
                               asked=["london"])
    assert got == ["Babbage", "Charles Babbage", "Analytical Engine", "Paris"]
    assert lookahead_candidates("", "q?", ["X"], 6) == ["X"]


def test_choose_query_replaces_greedy_only_by_a_margin():
    assert choose_query(["g", "a", "b"], [0.5, 0.65, 0.4], 0.2) == "g"  # +0.15: not enough
    assert choose_query(["g", "a", "b"], [0.5, 0.75, 0.4], 0.2) == "a"
    assert choose_query(["g", "a"], [0.9, 0.1], 0.0) == "g"
    assert choose_query(["g", "a"], [-1.0, 0.3], 0.2) == "a"  # greedy found nothing new
    assert choose_query([], [], 0.2) == ""


def test_name_finder_kinds():
    assert name_finder("capitalized") is capitalized_names
    with pytest.raises(InputError, match="names must be one of"):
        name_finder("regex")


def test_lookahead_replaces_a_query_that_leads_nowhere_and_reuses_its_search():
    asked: list[str] = []
    overlap = overlap_retriever()

    def counted(query: str, k: int) -> list[Document]:
        asked.append(query)
        return overlap(query, k)

    # the expert asks for "Drama season", which finds nothing about the director
    plain, _ = chain(FakeHopLLM(next_query="Drama season"), retriever=counted, lookahead=0)
    assert plain.answer(QUESTION).refused
    asked.clear()
    rag, _ = chain(FakeHopLLM(next_query="Drama season"), retriever=counted, lookahead=3)
    result = rag.answer(QUESTION)
    first = result.hops[0]
    # "Blue Film" is in the question: only "Jane Roe" is tried beside the generated query
    assert [c for c, _ in first.lookahead] == ["Drama season", "Jane Roe"]
    assert first.lookahead[1][1] == 0.9 and first.lookahead[0][1] == 0.1
    assert first.next_query == "Jane Roe" and result.hops[1].query == "Jane Roe"
    assert result.answer == "Lyon [3]." and result.context.stopped == "enough"
    # hop 1, then one search per candidate; hop 2 reads the chosen search's passages
    assert asked == [QUESTION, f"Drama season {QUESTION}", f"Jane Roe {QUESTION}"]
    assert result.context.records()[0]["lookahead"] == [["Drama season", 0.1],
                                                        ["Jane Roe", 0.9]]
    assert result.calls["lookahead"] == 2
    # hop 2's passage "roe" was judged by the lookahead for "Jane Roe": not judged again
    assert result.hops[1].retrieved[0].id == "roe"
    assert result.hops[1].keep_scores[0] == 0.9
    assert result.calls["keep"] == 2 + len(result.hops[1].retrieved) - 1


def test_lookahead_keeps_the_generated_query_when_no_name_beats_it():
    rag, _ = chain(lookahead=3, lookahead_margin=0.0)
    result = rag.answer(QUESTION)  # the expert already asks for "Jane Roe"
    assert result.hops[0].next_query == "Jane Roe"
    assert [c for c, _ in result.hops[0].lookahead] == ["Jane Roe"]
    assert result.answer == "Lyon [3]."


def test_spacy_name_finder_drops_dates_and_numbers():
    pytest.importorskip("spacy")
    names = name_finder("spacy")("Jane Roe was born in Lyon on 3 May 1950 with two brothers.")
    assert "Jane Roe" in names and "Lyon" in names
    assert not any(any(c.isdigit() for c in n) for n in names) and "two" not in names
