"""Training-data builders on tiny hand-made HotpotQA / SQuAD / MS MARCO rows (no shared data)."""

from __future__ import annotations

import copy
import json

import pytest
from tiny_models import tiny_tokenizer

from expertrag.errors import InputError
from expertrag.models.chat import render_prompt
from expertrag.rag import INSTRUCTIONS, build_messages, parse_citations
from expertrag.training import (
    REFUSAL,
    RELEVANCE_LABELS,
    DataError,
    DataNotFoundError,
    DataRowError,
    build_raft,
    build_relevance,
    build_squad_raft,
    encode_row,
    relevance_messages,
    split_rows,
)
from expertrag.training.data import MsMarco, data_dir, load_hotpot, load_msmarco


def hotpot_item(i: int, n_distractors: int = 8) -> dict:
    titles = [f"Gold A{i}", f"Gold B{i}"] + [f"Other {i}-{j}" for j in range(n_distractors)]
    sentences = [[f"Paragraph {t} first sentence.", f" It has facts about {t}."] for t in titles]
    return {
        "id": f"q{i}", "question": f"What links item {i}?", "answer": f"answer {i}",
        "type": "bridge",
        "supporting_facts": {"title": [titles[0], titles[1]], "sent_id": [0, 1]},
        "context": {"title": titles, "sentences": sentences},
    }


def hotpot_rows(n: int = 40) -> list[dict]:
    return [hotpot_item(i) for i in range(n)]


def squad_articles() -> list[dict]:
    articles = []
    for a in range(2):
        paragraphs = []
        for p in range(5):
            context = f"Article {a} paragraph {p} says the value is v{a}{p}."
            qas = [
                {"id": f"{a}-{p}-0", "question": f"What value does {a}/{p} give?",
                 "answers": [{"text": f"v{a}{p}", "answer_start": 0}], "is_impossible": False},
                {"id": f"{a}-{p}-1", "question": f"Who wrote {a}/{p}?", "answers": [],
                 "plausible_answers": [{"text": "x", "answer_start": 0}], "is_impossible": True},
            ]
            paragraphs.append({"context": context, "qas": qas})
        articles.append({"title": f"Article {a}", "paragraphs": paragraphs})
    return articles


# ------------------------------------------------------------------------------ RAFT
def test_raft_is_deterministic_for_a_seed_and_differs_across_seeds():
    rows = hotpot_rows()
    assert build_raft(rows, seed=7) == build_raft(copy.deepcopy(rows), seed=7)
    assert build_raft(rows, seed=7) != build_raft(rows, seed=8)


def test_raft_rounds_add_fresh_draws_and_keep_round_zero():
    rows = hotpot_rows(20)
    one = build_raft(rows, distractors_k=(1, 3), p_no_oracle=0.5, pair_refusals=True, seed=4)
    three = build_raft(rows, distractors_k=(1, 3), p_no_oracle=0.5, pair_refusals=True, seed=4,
                       rounds=3)
    assert three[:len(one)] == one  # round 0 is the single-round build
    later = three[len(one):]
    assert len(later) == 2 * len(one) and all(r["meta"]["round"] in (1, 2) for r in later)
    # the same questions, other prompts (passage draws and order differ)
    prompts = [r["messages"][0]["content"] for r in three]
    assert len(set(prompts)) > len(one) * 2
    assert sum(r["answer"] == REFUSAL for r in later[:len(one)]) == 10  # round(0.5 * 20)
    with pytest.raises(InputError, match="rounds"):
        build_raft(rows, rounds=0)


def test_raft_refusal_share_passages_and_citations():
    rows = build_raft(hotpot_rows(40), distractors_k=3, p_no_oracle=0.25, seed=1)
    refusals = [r for r in rows if r["answer"] == REFUSAL]
    assert len(refusals) == 10  # exactly round(0.25 * 40)
    for item, row in zip(hotpot_rows(40), rows, strict=True):
        text = row["messages"][0]["content"]
        assert row["meta"]["n_passages"] == 5  # same count with or without the oracle
        assert "\n\n[5] " in text and "[6] " not in text
        gold_in = [f"Paragraph Gold A{row['meta']['index']} " in text,
                   f"Paragraph Gold B{row['meta']['index']} " in text]
        if row["meta"]["has_oracle"]:
            assert all(gold_in)
            cited = parse_citations(row["answer"], 5)
            assert sorted(cited) == row["meta"]["oracle_passages"] and len(cited) == 2
            for n in cited:  # the cited numbers are the gold passages
                assert f"[{n}] Paragraph Gold" in text
            assert row["answer"].startswith(item["answer"])
        else:
            assert not any(gold_in)
            assert row["answer"] == REFUSAL


def test_raft_prompt_is_the_rag_prompt():
    row = build_raft(hotpot_rows(1), p_no_oracle=0.0, seed=3)[0]
    content = row["messages"][0]["content"]
    assert INSTRUCTIONS in content
    passages = [line for line in content.split("\n\n") if line.startswith("[")]
    from expertrag.types import Document

    rebuilt = build_messages("What links item 0?", [Document(text=p.split("] ", 1)[1])
                                                     for p in passages])
    assert rebuilt == row["messages"]


def test_refusal_wording_matches_the_rag_instructions():
    assert REFUSAL.rstrip(".") in INSTRUCTIONS


def test_raft_item_without_distractors_still_builds():
    rows = hotpot_rows(4)
    rows[2] = hotpot_item(2, n_distractors=0)
    built = build_raft(rows, p_no_oracle=1.0, seed=0)
    assert built[2]["answer"] == REFUSAL and built[2]["meta"]["n_passages"] == 5


@pytest.mark.parametrize(
    ("breakage", "reason"),
    [
        (lambda r: r.pop("answer"), "answer"),
        (lambda r: r.update(answer="  "), "answer"),
        (lambda r: r.update(context={"title": [], "sentences": []}), "empty passages"),
        (lambda r: r["context"]["sentences"].__setitem__(3, []), "empty passage"),
        (lambda r: r.update(question=""), "question"),
        (lambda r: r["supporting_facts"].update(title=["Nowhere"]), "not in context"),
    ],
)
def test_broken_hotpot_row_is_reported_with_its_index(breakage, reason):
    rows = hotpot_rows(6)
    breakage(rows[4])
    for builder in (build_raft, build_relevance):
        with pytest.raises(DataRowError, match=reason) as info:
            builder(rows, seed=0)
        assert info.value.index == 4
        assert "row 4" in str(info.value)


# ------------------------------------------------------------------------------ SQuAD
def test_squad_unanswerable_questions_target_the_refusal():
    rows = build_squad_raft(squad_articles(), distractors_k=2, seed=5)
    assert len(rows) == 20
    assert rows == build_squad_raft(squad_articles(), distractors_k=2, seed=5)
    for row in rows:
        text = row["messages"][0]["content"]
        a, p = row["meta"]["id"].split("-")[:2]
        own = f"Article {a} paragraph {p} says"
        assert own in text  # the question's own paragraph is always shown here
        assert row["meta"]["n_passages"] == 3
        if row["meta"]["is_impossible"]:
            assert row["answer"] == REFUSAL
        else:
            (n,) = parse_citations(row["answer"], 3)
            assert f"[{n}] {own}" in text
            assert row["answer"] == f"v{a}{p} [{n}]."
        # distractors come from the same article only
        assert f"Article {1 - int(a)} paragraph" not in text


def test_squad_longest_answer_within_the_word_cap():
    articles = squad_articles()
    qa = articles[0]["paragraphs"][0]["qas"][0]
    qa["answers"] = [{"text": "August"}, {"text": "the third Saturday of August"},
                     {"text": "on the third Saturday of August at dusk with lanterns"}]
    pick = lambda **kw: next(r for r in build_squad_raft(articles, seed=5, **kw)  # noqa: E731
                             if r["meta"]["id"] == "0-0-0")
    assert pick()["meta"]["gold_answer"] == "August"
    longest = pick(answer="longest")
    assert longest["meta"]["gold_answer"] == "the third Saturday of August"  # 11 words > 8
    assert longest["answer"].startswith("the third Saturday of August [")
    with pytest.raises(InputError, match="answer"):
        build_squad_raft(articles, answer="shortest")


def test_squad_sample_and_no_oracle_share():
    rows = build_squad_raft(squad_articles(), p_no_oracle=0.5, max_questions=12, seed=2)
    assert len(rows) == 12
    dropped = [r for r in rows if not r["meta"]["is_impossible"] and not r["meta"]["has_oracle"]]
    assert len(dropped) >= 1
    assert all(r["answer"] == REFUSAL for r in dropped)


def test_broken_squad_row_is_reported_with_its_index():
    articles = squad_articles()
    articles[0]["paragraphs"][1]["qas"][0]["answers"] = []  # answerable, no answer: question 2
    with pytest.raises(DataRowError, match="no answer") as info:
        build_squad_raft(articles)
    assert info.value.index == 2
    articles = squad_articles()
    articles[1]["paragraphs"][0]["context"] = ""  # questions 10 and 11 lose their passage
    with pytest.raises(DataRowError, match="empty passage") as info:
        build_squad_raft(articles)
    assert info.value.index == 10


# ------------------------------------------------------------------------------ relevance
def msmarco() -> MsMarco:
    corpus = {f"d{i}": f"Document {i} text." for i in range(12)}
    queries = {"q1": "first query", "q2": "second query"}
    qrels = [("q1", "d0", 3), ("q1", "d1", 2), ("q1", "d2", 1), ("q1", "d3", 1),
             ("q1", "d4", 1), ("q2", "d5", 2), ("q2", "d6", 1), ("q2", "missing", 1)]
    return MsMarco(corpus, queries, qrels)


def test_relevance_is_balanced_deterministic_with_hard_negatives():
    rows = build_relevance(hotpot_rows(10), msmarco=msmarco(), seed=4)
    assert rows == build_relevance(hotpot_rows(10), msmarco=msmarco(), seed=4)
    labels = [r["answer"] for r in rows]
    assert set(labels) == set(RELEVANCE_LABELS)
    assert labels.count("yes") == labels.count("no") == 10 * 2 + 2 + 1
    for row in rows:
        if row["meta"]["source"] == "hotpotqa":
            gold = row["meta"]["title"].startswith("Gold")
            assert (row["answer"] == "yes") == gold
            assert row["meta"]["title"].startswith(("Gold", "Other"))  # same-item negatives
        assert row["messages"] == relevance_messages(
            row["messages"][0]["content"].split("Question: ")[1].split("\n")[0],
            row["messages"][0]["content"].split("Passage:\n")[1].split("\n\nQuestion")[0],
        )


def test_relevance_from_squad_pairs_unanswerable_paragraphs_as_negatives():
    rows = build_relevance(hotpot_rows(2), squad=squad_articles(), squad_per_label=3, seed=1)
    assert rows == build_relevance(hotpot_rows(2), squad=squad_articles(), squad_per_label=3,
                                   seed=1)
    squad = [r for r in rows if r["meta"]["source"] == "squad2"]
    assert [r["answer"] for r in squad].count("yes") == 3
    assert [r["answer"] for r in squad].count("no") == 3
    for row in squad:  # "x-y-1" are the unanswerable questions, each with its own paragraph
        assert (row["answer"] == "no") == row["meta"]["id"].endswith("-1")
        a, p = row["meta"]["group"].split(":")[1:]
        assert f"Article {a} paragraph {p} says" in row["messages"][0]["content"]
    default = build_relevance([], squad=squad_articles(), seed=1)
    assert len(default) == 2 * 10  # as many of each kind as the smaller kind has
    broken = squad_articles()
    broken[0]["paragraphs"][1]["qas"][0]["question"] = " "
    with pytest.raises(DataRowError, match="row 2"):
        build_relevance([], squad=broken)


def test_relevance_rounds_reuse_gold_with_fresh_distractors():
    one = build_relevance(hotpot_rows(4), seed=3)
    three = build_relevance(hotpot_rows(4), seed=3, hotpot_rounds=3)
    assert len(one) == 4 * 4 and len(three) == 4 * 4 * 3
    labels = [r["answer"] for r in three]
    assert labels.count("yes") == labels.count("no")
    for i in range(4):
        item = [r for r in three if r["meta"]["index"] == i]
        negatives = [r["meta"]["title"] for r in item if r["answer"] == "no"]
        assert len(negatives) == len(set(negatives)) == 6  # no distractor is used twice
        assert all(t.startswith(f"Other {i}-") for t in negatives)
        gold = [r["meta"]["title"] for r in item if r["answer"] == "yes"]
        assert sorted(gold) == sorted([f"Gold A{i}", f"Gold B{i}"] * 3)
    # a round runs only with a full set of unseen distractors (3 left: one more round)
    short = build_relevance([hotpot_item(0, n_distractors=5)], seed=0, hotpot_rounds=4)
    assert len(short) == 2 * 4
    with pytest.raises(InputError, match="hotpot_rounds"):
        build_relevance(hotpot_rows(2), hotpot_rounds=0)


def test_relevance_squad_sibling_negatives_are_other_paragraphs_of_the_article():
    rows = build_relevance([], squad=squad_articles(), squad_per_label=4, seed=2,
                           squad_negatives="sibling")
    assert rows == build_relevance([], squad=squad_articles(), squad_per_label=4, seed=2,
                                   squad_negatives="sibling")
    assert [r["answer"] for r in rows].count("yes") == 4
    assert [r["answer"] for r in rows].count("no") == 4
    for row in rows:
        assert row["meta"]["id"].endswith("-0")  # answerable questions only
        a, p = row["meta"]["group"].split(":")[1:]
        own = f"Article {a} paragraph {p} says" in row["messages"][0]["content"]
        assert own == (row["answer"] == "yes")
        assert f"Article {a} paragraph" in row["messages"][0]["content"]  # same article
    assert len(build_relevance([], squad=squad_articles(), squad_negatives="sibling")) == 20
    lonely = [{"title": "T", "paragraphs": [squad_articles()[0]["paragraphs"][0]]}]
    with pytest.raises(DataRowError, match="other paragraph"):
        build_relevance([], squad=lonely, squad_negatives="sibling")
    with pytest.raises(InputError, match="squad_negatives"):
        build_relevance([], squad=squad_articles(), squad_negatives="random")


def test_relevance_labels_are_single_distinct_first_tokens():
    tok = tiny_tokenizer()
    firsts = [tok(label, add_special_tokens=False)["input_ids"][0] for label in RELEVANCE_LABELS]
    assert len(set(firsts)) == 2


def test_relevance_messages_is_one_user_turn():
    msgs = relevance_messages(" Who? ", " A passage. ")
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    assert "A passage." in msgs[0]["content"] and "Question: Who?" in msgs[0]["content"]


# ------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("builder", ["raft", "relevance"])
def test_masking_is_exact(builder):
    tok = tiny_tokenizer()
    rows = (build_raft(hotpot_rows(6), seed=0) if builder == "raft"
            else build_relevance(hotpot_rows(3), seed=0))
    for row in rows:
        enc = encode_row(tok, row)
        prompt = render_prompt(tok, row["messages"], add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tok(row["answer"], add_special_tokens=False)["input_ids"]
        n = len(prompt_ids)
        assert enc["input_ids"][:n] == prompt_ids  # the prompt exactly as served
        assert enc["labels"][:n] == [-100] * n  # every prompt token masked
        assert enc["labels"][n:] == [*answer_ids, tok.eos_token_id]  # answer + EOS only
        assert enc["input_ids"][n:] == enc["labels"][n:]
        assert tok.decode(enc["labels"][n:-1]) == row["answer"]


def test_answers_end_with_the_chat_templates_end_of_turn_whatever_the_eos():
    """transformers 5.17 read SmolLM2's GGUF EOS as <|im_start|>: an expert trained there
    ended its answers with it and never stopped elsewhere. The template decides."""
    from expertrag.training.trainer import end_of_turn_id

    tok = tiny_tokenizer()
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end_of_turn_id(tok) == im_end
    skewed = tiny_tokenizer()
    skewed.eos_token = "<|im_start|>"
    assert skewed.eos_token_id != im_end
    row = {"messages": [{"role": "user", "content": "hi"}], "answer": "yes"}
    assert encode_row(skewed, row)["labels"][-1] == im_end
    plain = tiny_tokenizer()
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert end_of_turn_id(plain) == plain.eos_token_id  # no end-of-turn token: EOS


def test_encode_row_reports_broken_rows_and_length():
    tok = tiny_tokenizer()
    row = {"messages": [{"role": "user", "content": "hi"}], "answer": "yes"}
    assert encode_row(tok, row, max_length=3) is None
    with pytest.raises(DataRowError, match="row 7"):
        encode_row(tok, {**row, "answer": ""}, index=7)
    with pytest.raises(DataRowError, match="messages"):
        encode_row(tok, {**row, "messages": []}, index=1)


def test_split_keeps_groups_together():
    rows = build_relevance(hotpot_rows(20), seed=0)
    train, held = split_rows(rows, 0.25, seed=0)
    assert len(train) + len(held) == len(rows)
    assert {r["meta"]["group"] for r in train}.isdisjoint({r["meta"]["group"] for r in held})
    assert len({r["meta"]["group"] for r in held}) == 5
    assert split_rows(rows, 0.25, seed=0) == (train, held)


# ------------------------------------------------------------------------------ loaders
def test_loaders_refuse_held_out_and_missing_data(tmp_path):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps(hotpot_item(0)) + "\n")
    with pytest.raises(DataError, match="held-out"):
        load_hotpot(test_file)
    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(hotpot_item(0)) + "\n\n" + json.dumps(hotpot_item(1)) + "\n")
    assert [r["id"] for r in load_hotpot(train)] == ["q0", "q1"]
    with pytest.raises(DataNotFoundError, match="--data-dir"):
        data_dir(tmp_path / "nope")
    with pytest.raises(DataNotFoundError):
        load_msmarco(tmp_path)


def test_msmarco_loader(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text(
        json.dumps({"_id": "d1", "title": "T", "text": "body"}) + "\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "query"}) + "\n")
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t2\n")
    data = load_msmarco(tmp_path)
    assert data.corpus == {"d1": "T\nbody"} and data.qrels == [("q1", "d1", 2)]


# ------------------------------------------------------------------------------ recipes
def test_recipes_build_from_a_data_folder_and_never_read_the_test_split(tmp_path):
    from expertrag.training.recipes import RECIPES, build_recipe_rows, get_recipe

    (tmp_path / "hotpotqa").mkdir()
    (tmp_path / "hotpotqa" / "train.jsonl").write_text(
        "\n".join(json.dumps(r) for r in hotpot_rows(8)) + "\n")
    (tmp_path / "hotpotqa" / "test.jsonl").write_text("not json: must never be read\n")
    (tmp_path / "squad2").mkdir()
    (tmp_path / "squad2" / "dev-v2.0-sample.json").write_text(
        json.dumps({"version": "v2.0", "data": squad_articles()}))
    (tmp_path / "squad2" / "dev-v2.0-15-articles.json").write_text(
        json.dumps({"version": "v2.0", "data": squad_articles()}))
    (tmp_path / "halueval").mkdir()
    for name in ("qa_data-first1000.jsonl", "qa_generation_one-turn_500.jsonl",
                 "qa_generation_multi-turn_500.jsonl"):
        (tmp_path / "halueval" / name).write_text(
            "\n".join(json.dumps(r) for r in halueval_rows(8)) + "\n")
    ms = tmp_path / "beir" / "msmarco"
    (ms / "qrels").mkdir(parents=True)
    (ms / "corpus.jsonl").write_text("\n".join(
        json.dumps({"_id": f"d{i}", "title": "", "text": f"doc {i}"}) for i in range(4)))
    (ms / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "query"}))
    (ms / "qrels" / "test.tsv").write_text("q1\td0\t2\nq1\td1\t1\n")
    assert "hotpotqa/test.jsonl" not in json.dumps(RECIPES)
    for name in RECIPES:
        recipe = get_recipe(name)
        rows = build_recipe_rows(recipe, tmp_path)
        assert rows == build_recipe_rows(get_recipe(name), tmp_path)
        assert all(spec["rows"] > 0 for spec in recipe["builders"])
        assert sum(spec["rows"] for spec in recipe["builders"]) == len(rows)
    with pytest.raises(DataNotFoundError):
        build_recipe_rows(get_recipe("relevance"), tmp_path / "absent")


# ------------------------------------------------------------------------------ v2 builders
def answer_in_one_gold(i: int) -> dict:
    """A HotpotQA-like item whose answer occurs in exactly one gold paragraph."""
    item = hotpot_item(i)
    item["context"]["sentences"][1] = [f"Gold B{i} holds answer {i}.", " More text."]
    return item


def test_raft_pairs_refusals_with_their_answer_rows():
    items = hotpot_rows(10)
    rows = build_raft(items, distractors_k=2, p_no_oracle=0.5, pair_refusals=True, seed=3)
    by_item: dict[int, list[str]] = {}
    for row in rows:
        by_item.setdefault(row["meta"]["index"], []).append(row["meta"]["variant"])
    assert all("oracle" in v for v in by_item.values())  # every item keeps its answer row
    assert sum("no-oracle" in v for v in by_item.values()) == 5
    for row in rows:
        if row["meta"]["variant"] == "no-oracle":
            assert row["answer"] == REFUSAL and "Paragraph Gold" not in row["messages"][0][
                "content"]
    unpaired = build_raft(items, distractors_k=2, p_no_oracle=0.5, seed=3)
    assert len(unpaired) == 10 and len(rows) == 15


def test_raft_answer_dropped_rows_keep_the_other_hop_only():
    items = [answer_in_one_gold(i) for i in range(6)]
    rows = build_raft(items, distractors_k=2, p_no_oracle=0.0, p_answer_dropped=1.0, seed=0)
    dropped = [r for r in rows if r["meta"]["variant"] == "answer-dropped"]
    assert len(dropped) == 6
    for row in dropped:
        i = row["meta"]["index"]
        text = row["messages"][0]["content"]
        assert row["answer"] == REFUSAL and not row["meta"]["has_oracle"]
        assert f"Paragraph Gold A{i} " in text  # the other hop stays
        assert f"answer {i}" not in text.split("Question:")[0]  # the answer is gone
        assert row["meta"]["n_passages"] == 4  # same count as the item's answer row
    # an answer found in both gold paragraphs (or yes/no) gives no such row
    assert not [r for r in build_raft(hotpot_rows(4), p_answer_dropped=1.0, seed=0)
                if r["meta"]["variant"] == "answer-dropped"]


def test_distractor_ranges_vary_the_passage_count():
    rows = build_raft(hotpot_rows(30), distractors_k=(0, 3), p_no_oracle=0.0, seed=1)
    counts = {r["meta"]["n_passages"] for r in rows}
    assert counts <= {2, 3, 4, 5} and len(counts) >= 3
    squad = build_squad_raft(squad_articles(), distractors_k=(0, 2), seed=1)
    assert {r["meta"]["n_passages"] for r in squad} <= {1, 2, 3}
    with pytest.raises(InputError, match="distractors_k"):
        build_raft(hotpot_rows(2), distractors_k=(3, 1))
    with pytest.raises(InputError, match="distractors_k"):
        build_squad_raft(squad_articles(), distractors_k=-1)


def test_squad_caps_each_kind_separately():
    rows = build_squad_raft(squad_articles(), max_answerable=6, max_impossible=2, seed=4)
    assert sum(r["meta"]["is_impossible"] for r in rows) == 2
    assert sum(not r["meta"]["is_impossible"] for r in rows) == 6
    assert rows == build_squad_raft(squad_articles(), max_answerable=6, max_impossible=2, seed=4)
    none = build_squad_raft(squad_articles(), max_impossible=0, seed=4)
    assert len(none) == 10 and not any(r["meta"]["is_impossible"] for r in none)
    with pytest.raises(InputError, match="not both"):
        build_squad_raft(squad_articles(), max_questions=3, max_answerable=2)


def halueval_rows(n: int = 12) -> list[dict]:
    return [{"knowledge": f"Bridge {i} is linked to Place {i}.Place {i} is home to Answer{i}.",
             "question": f"What is the bridge {i} place home to?", "right_answer": f"Answer{i}",
             "hallucinated_answer": f"Bridge {i} is home to Something Else."}
            for i in range(n)]


def test_knowledge_passages_cut_at_joins_but_not_abbreviations():
    from expertrag.training.data import knowledge_passages

    assert knowledge_passages("It is old.Paris is big.") == ["It is old.", "Paris is big."]
    text = 'It runs in the U.S. and "F.C. Paris" plays.The club is in Paris.'
    assert knowledge_passages(text) == ['It runs in the U.S. and "F.C. Paris" plays.',
                                        "The club is in Paris."]
    assert knowledge_passages("Via U.S. Highway 60.Morehead is a city.")[0] == \
        "Via U.S. Highway 60."


def test_halueval_raft_answers_cite_and_drop_the_answer_passage():
    from expertrag.training.data import build_halueval_raft

    rows = build_halueval_raft(halueval_rows(), distractors_k=1, p_no_answer=0.5, seed=2)
    assert rows == build_halueval_raft(halueval_rows(), distractors_k=1, p_no_answer=0.5, seed=2)
    assert sum(r["answer"] == REFUSAL for r in rows) == 6
    for row in rows:
        i = row["meta"]["index"]
        text = row["messages"][0]["content"].split("Question:")[0]
        assert row["meta"]["n_passages"] == 3
        if row["answer"] == REFUSAL:
            assert f"Answer{i}" not in text and f"Bridge {i} is linked" in text
        else:
            (n,) = parse_citations(row["answer"], 3)
            assert f"[{n}] Place {i} is home to Answer{i}." in text
            assert row["answer"] == f"Answer{i} [{n}]."


def test_halueval_loader_keeps_the_judge_rows_out(tmp_path):
    from expertrag.training.data import HALUEVAL_QA, load_halueval

    path = tmp_path / "qa_data-first1000.jsonl"
    rows = halueval_rows(2) * 300
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    train = load_halueval(path)
    held = load_halueval(path, part="heldout")
    assert [r["meta_index"] for r in train] == list(range(500))
    assert [r["meta_index"] for r in held] == list(range(500, 600))
    other = tmp_path / "qa_generation_one-turn_500.jsonl"
    other.write_text("\n".join(json.dumps(r) for r in rows[:10]) + "\n")
    assert len(load_halueval(other)) == 10
    with pytest.raises(DataError, match="no held-out rows"):
        load_halueval(other, part="heldout")
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({**rows[0], "right_answer": " "}) + "\n")
    with pytest.raises(DataRowError, match="right_answer"):
        load_halueval(broken)
    assert HALUEVAL_QA.endswith(path.name)


def test_init_adapter_from_git_history_is_extracted_once_and_whole(tmp_path):
    import subprocess

    from expertrag.errors import InputError
    from expertrag.training.recipes import adapter_from_git, resolve_init_adapter

    repo = tmp_path / "repo"
    (repo / "experts" / "qa").mkdir(parents=True)
    (repo / "experts" / "qa" / "adapter_config.json").write_text('{"r": 8}')
    (repo / "experts" / "qa" / "adapter_model.safetensors").write_bytes(b"v1 weights")

    def git(*args):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "v1")
    (repo / "experts" / "qa" / "adapter_model.safetensors").write_bytes(b"v2 weights")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "v2")
    cache = tmp_path / "cache"
    old = adapter_from_git("HEAD~1", "experts/qa", repo, cache)
    assert (old / "adapter_model.safetensors").read_bytes() == b"v1 weights"
    assert adapter_from_git("HEAD~1", "experts/qa", repo, cache) == old  # reused
    assert [p.name for p in cache.iterdir()] == [old.name]  # no temp folder left behind
    with pytest.raises(InputError, match="cannot read"):
        adapter_from_git("HEAD", "experts/missing", repo, cache)
    with pytest.raises(InputError, match="git:REV:PATH"):
        resolve_init_adapter("git:HEAD")
