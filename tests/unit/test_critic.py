"""The critic's prompts and scoring (expertrag.reflection), its data builders, and the trainer's
warm start, on tiny hand-made rows and a tiny random model (no shared data)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from test_training import MODULES, adapter_tensors, config, label_rows
from test_training_data import halueval_rows, hotpot_item, squad_articles
from tiny_models import tiny_llm, tiny_tokenizer

from expertrag.errors import InputError
from expertrag.reflection import (
    ISREL,
    ISSUP,
    ISUSE,
    JUDGEMENTS,
    LABELS,
    RETRIEVE,
    Critic,
    Judgement,
    critic_messages,
)
from expertrag.training import REFUSAL, TrainingError, train_expert
from expertrag.training.critic_data import (
    cap_rows,
    critic_halueval_rows,
    critic_hotpot_rows,
    critic_retrieve_rows,
    critic_squad_rows,
    load_instructions,
    template_part,
)


# ------------------------------------------------------------------------------ prompts
def test_every_judgement_has_distinct_single_first_token_labels():
    tok = tiny_tokenizer()
    for kind in JUDGEMENTS:
        firsts = [tok(lab, add_special_tokens=False)["input_ids"][0] for lab in LABELS[kind]]
        assert len(set(firsts)) == len(firsts), kind


def test_critic_messages_need_what_the_judgement_reads():
    msgs = critic_messages(ISSUP, " Who? ", " A passage. ", " Bob ")
    assert len(msgs) == 1 and msgs[0]["role"] == "user"
    text = msgs[0]["content"]
    assert "A passage." in text and "Question: Who?" in text and "Answer: Bob" in text
    assert "Passage" not in critic_messages(RETRIEVE, "Write a poem.")[0]["content"]
    with pytest.raises(InputError, match="passage"):
        critic_messages(ISREL, "Who?")
    with pytest.raises(InputError, match="answer"):
        critic_messages(ISUSE, "Who?", answer=" ")
    with pytest.raises(InputError, match="unknown judgement"):
        critic_messages("isgood", "Who?")
    with pytest.raises(InputError, match="question"):
        critic_messages(RETRIEVE, "")


def test_judgement_scores_follow_self_rag_arithmetic():
    sup = Judgement(ISSUP, {"fully": 0.5, "partially": 0.3, "no": 0.2})
    assert sup.score == pytest.approx(0.5 + 0.5 * 0.3) and sup.label == "fully"
    use = Judgement(ISUSE, {"5": 0.4, "4": 0.3, "3": 0.1, "2": 0.1, "1": 0.1})
    assert use.score == pytest.approx(0.4 + 0.5 * 0.3 + 0 - 0.5 * 0.1 - 0.1)
    assert Judgement(RETRIEVE, {"yes": 0.2, "no": 0.8}).score == 0.2


def test_critic_reads_normalised_probabilities_from_one_forward_pass():
    llm = tiny_llm()
    critic = Critic(llm, expert=None)
    out = critic.support("Who?", [("Passage one.", "Bob"), ("Passage two.", "Ann")])
    assert len(out) == 2
    for j in out:
        assert set(j.probs) == set(LABELS[ISSUP])
        assert math.isclose(sum(j.probs.values()), 1.0, rel_tol=1e-5)
    assert [j.kind for j in critic.retrieve(["Write a poem.", "Who founded Rome?"])] == \
        [RETRIEVE, RETRIEVE]
    assert len(critic.utility("Who?", ["Bob"])[0].probs) == 5
    assert critic.relevance("Who?", []) == []


# ------------------------------------------------------------------------------ data
def test_instruction_set_is_packaged_labelled_and_split_by_template():
    rows = load_instructions()
    assert len(rows) > 300
    assert {r["retrieve"] for r in rows} == {True, False}
    families = {r["family"] for r in rows if not r["retrieve"]}
    assert {"creative", "rewrite", "arithmetic", "chat"} <= families
    parts = {template_part(r["template"]) for r in rows}
    assert parts == {"train", "heldout"}
    train = critic_retrieve_rows(rows, ["Who built it?"], part="train")
    held = critic_retrieve_rows(rows, [], part="heldout")
    assert {r["meta"]["group"] for r in train}.isdisjoint({r["meta"]["group"] for r in held})
    assert train[-1]["answer"] == "yes" and train[-1]["meta"]["source"] == "questions"
    assert {r["answer"] for r in held} == {"yes", "no"}


def answer_in_one_gold(i: int) -> dict:
    item = hotpot_item(i)
    item["context"]["sentences"][1] = [f"Gold B{i} holds answer {i}.", " More text."]
    return item


def test_hotpot_critic_rows_label_by_construction():
    items = [answer_in_one_gold(i) for i in range(6)]
    rows = critic_hotpot_rows(items, seed=1)
    assert rows == critic_hotpot_rows(items, seed=1)
    for row in rows:
        task, label, text = row["meta"]["task"], row["answer"], row["messages"][0]["content"]
        i = row["meta"]["index"]
        assert label in LABELS[task]
        if task == ISREL:
            assert ("Paragraph Gold" in text or f"Gold B{i} holds" in text) == \
                (label == "relevant")
        if task == ISSUP:
            passage = text.split("Question:")[0]
            answer = text.split("Answer: ")[1].split("\n")[0]
            if label == "fully":
                assert f"Paragraph Gold A{i}" in passage and f"Gold B{i} holds" in passage
            elif label == "partially":  # only the hop that holds the answer
                assert f"Gold B{i} holds" in passage and f"Gold A{i}" not in passage
                assert answer == f"answer {i}"
            else:
                assert answer not in passage
        if task == ISUSE and label == "2":
            assert f"Answer: {REFUSAL}" in text
    labels = {(r["meta"]["task"], r["answer"]) for r in rows}
    assert {(ISSUP, "fully"), (ISSUP, "partially"), (ISSUP, "no"), (ISUSE, "5"),
            (ISUSE, "3"), (ISUSE, "2"), (ISUSE, "1")} <= labels


def test_halueval_critic_rows_balance_answer_styles():
    halu = halueval_rows(6)
    alt = [{**r, "hallucinated_answer": f"Another wrong claim {i}."} for i, r in enumerate(halu)]
    rows = critic_halueval_rows(halu, [alt], seed=0)
    sup = [r for r in rows if r["meta"]["task"] == ISSUP]
    for i in range(6):
        mine = [r for r in sup if r["meta"]["index"] == i]
        no = [r for r in mine if r["answer"] == "no"]
        assert len(no) == 2  # both hallucinated answers
        long_fully = [r for r in mine if r["meta"].get("kind") == "sentence"]
        assert long_fully and f"Answer: Place {i} is home to Answer{i}." in \
            long_fully[0]["messages"][0]["content"]  # a supported full-sentence answer
    assert {r["answer"] for r in rows if r["meta"]["task"] == ISUSE} == {"5", "4", "2", "1"}


def test_squad_critic_rows_pair_own_and_sibling_paragraphs():
    rows = critic_squad_rows(squad_articles(), seed=0, max_questions=4)
    assert len(rows) == 16
    for row in rows:
        a, p = row["meta"]["group"].split(":")[1:]
        own = f"Article {a} paragraph {p} says" in row["messages"][0]["content"]
        assert own == (row["answer"] in ("relevant", "fully"))


def test_cap_rows_balances_labels_and_keeps_uncapped_tasks():
    rows = critic_hotpot_rows([answer_in_one_gold(i) for i in range(10)], seed=0)
    capped = cap_rows(rows, {ISSUP: 9}, seed=0)
    sup = [r["answer"] for r in capped if r["meta"]["task"] == ISSUP]
    assert len(sup) == 9 and sup.count("fully") == sup.count("partially") == sup.count("no")
    assert sum(r["meta"]["task"] == ISREL for r in capped) == \
        sum(r["meta"]["task"] == ISREL for r in rows)
    assert cap_rows(rows, {ISSUP: 9}, seed=0) == capped


# ------------------------------------------------------------------------------ warm start
def test_warm_start_reproduces_the_initial_adapter(tmp_path):
    llm = tiny_llm()
    first = tmp_path / "first"
    train_expert(llm.loaded, label_rows(8), None,
                 config(tmp_path, output_dir=str(first), epochs=1, eval_fraction=0.0))
    llm.add_expert("first", first)
    conv = [label_rows(1)[0]["messages"]]
    want = llm.label_probabilities(conv, expert="first")[0]
    # a higher rank and another alpha, no steps that change it (lr ~ 0): the same update
    second = tmp_path / "second"
    train_expert(llm.loaded, label_rows(8), None,
                 config(tmp_path, output_dir=str(second), r=8, alpha=4, epochs=1,
                        eval_fraction=0.0, learning_rate=1e-12, init_adapter=str(first)))
    weights = adapter_tensors(second)
    key = next(k for k in weights if ".lora_B." in k)
    assert weights[key].shape[1] == 8 and float(weights[key][:, 4:].abs().max()) < 1e-6
    llm.add_expert("second", second)
    got = llm.label_probabilities(conv, expert="second")[0]
    for label in want:
        assert got[label] == pytest.approx(want[label], abs=2e-3)


def test_warm_start_refuses_a_mismatched_adapter(tmp_path):
    llm = tiny_llm()
    small = tmp_path / "small"
    train_expert(llm.loaded, label_rows(8), None,
                 config(tmp_path, output_dir=str(small), epochs=1, eval_fraction=0.0,
                        target_modules=["q_proj"]))
    with pytest.raises(TrainingError, match="covers"):
        train_expert(llm.loaded, label_rows(8), None,
                     config(tmp_path, output_dir=str(tmp_path / "x"), epochs=1,
                            eval_fraction=0.0, init_adapter=str(small)))
    with pytest.raises(TrainingError, match="rank"):
        train_expert(llm.loaded, label_rows(8), None,
                     config(tmp_path, output_dir=str(tmp_path / "y"), r=2, epochs=1,
                            eval_fraction=0.0, target_modules=["q_proj"],
                            init_adapter=str(small)))
    with pytest.raises(TrainingError, match="not a PEFT adapter"):
        train_expert(llm.loaded, label_rows(8), None,
                     config(tmp_path, output_dir=str(tmp_path / "z"), epochs=1,
                            eval_fraction=0.0, init_adapter=str(Path(tmp_path / "none"))))
    assert MODULES


# ------------------------------------------------------------------------------ refusal gate
def test_pick_threshold_maximises_balanced_accuracy():
    from expertrag.training.gate import pick_threshold

    probs = [0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.9, 0.95]
    refuse = [False, False, False, True, False, True, True, True]
    got = pick_threshold(probs, refuse)
    # 0.375 and 0.65 both give balanced accuracy 0.875: the higher one answers more
    assert got["threshold"] == pytest.approx(0.65)
    assert got["at_threshold"]["refusal_accuracy"] == 0.75
    assert got["at_threshold"]["false_refusal_rate"] == 0.0
    assert got["at_0.5"]["refusal_accuracy"] == 0.75
    with pytest.raises(InputError, match="both kinds"):
        pick_threshold([0.2], [True])


def test_pick_threshold_keeps_false_refusals_under_the_cap():
    from expertrag.training.gate import pick_threshold

    probs = [0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8]
    refuse = [False, True, False, True, True, True, False, True]
    free = pick_threshold(probs, refuse)
    capped = pick_threshold(probs, refuse, max_false_refusals=0.0)
    assert free["threshold"] == pytest.approx(0.325)
    assert free["at_threshold"]["false_refusal_rate"] == pytest.approx(1 / 3)
    # nothing answerable may be refused: only 0.8 stays above every answerable row
    assert capped["threshold"] == pytest.approx(0.7)
    assert capped["at_threshold"]["refusal_accuracy"] == pytest.approx(0.2)
    assert capped["at_threshold"]["false_refusal_rate"] == 0.0
    assert capped["max_false_refusals"] == 0.0
    with pytest.raises(InputError, match="max_false_refusals"):
        pick_threshold(probs, refuse, max_false_refusals=1.5)


def test_calibrated_gate_is_recorded_and_served(tmp_path):
    from expertrag.models.llm import EXPERT_METADATA
    from expertrag.rag import REFUSAL
    from expertrag.training.gate import calibrate_gate

    llm = tiny_llm()
    folder = tmp_path / "gq"
    train_expert(llm.loaded, label_rows(8), None,
                 config(tmp_path, output_dir=str(folder), epochs=1, eval_fraction=0.0))
    llm.add_expert("gq", folder)
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}],
             "answer": REFUSAL if i % 2 else "Paris [1]."} for i in range(8)]
    result = calibrate_gate(llm, "gq", rows, folder, source="test rows")
    meta = json.loads((folder / EXPERT_METADATA).read_text())
    assert meta["refusal_gate"]["threshold"] == result["threshold"]
    assert meta["refusal_gate"]["text"] == REFUSAL and result["rows"] == 8
    assert "Refusal gate" in (folder / "README.md").read_text()
    from expertrag.training.gate import record_gate

    record_gate(folder, 0.3, {**result, "threshold": 0.3, "max_false_refusals": 0.15})
    card = (folder / "README.md").read_text()
    assert card.count("## Refusal gate") == 1 and ">= 0.300" in card and "at most 15%" in card
    assert json.loads((folder / EXPERT_METADATA).read_text())["refusal_gate"]["threshold"] == 0.3
    record_gate(folder, result["threshold"], result)
    again = tiny_llm()
    again.add_expert("gq", folder)
    res = again.generate(rows[0]["messages"], expert="gq", max_new_tokens=4)
    assert res.refusal_probability is not None
    assert (res.text == REFUSAL) == (res.refusal_probability >= result["threshold"])


def test_pick_evidence_threshold_is_a_floor_on_the_best_passage():
    from expertrag.training.gate import pick_evidence_threshold

    best = [0.95, 0.9, 0.85, 0.3, 0.2, 0.6, 0.1]
    refuse = [False, False, False, True, True, False, True]
    got = pick_evidence_threshold(best, refuse)
    assert got["threshold"] == pytest.approx(0.45)  # between 0.3 (refuse) and 0.6 (answer)
    assert got["at_threshold"] == {"refusal_accuracy": 1.0, "false_refusal_rate": 0.0,
                                   "balanced_accuracy": 1.0}
    assert got["auc"] == 1.0 and "at_0.5" not in got


def test_recorded_evidence_gate_is_served_by_the_pipeline(tmp_path):
    from expertrag.models.llm import EXPERT_METADATA
    from expertrag.rag import REFUSAL, RAGPipeline
    from expertrag.training.gate import evidence_scores, record_evidence_gate
    from expertrag.types import Document

    llm = tiny_llm()
    folder = tmp_path / "gq"
    train_expert(llm.loaded, label_rows(8), None,
                 config(tmp_path, output_dir=str(folder), epochs=1, eval_fraction=0.0))
    calibration = {"at_threshold": {"refusal_accuracy": 0.7, "false_refusal_rate": 0.1},
                   "auc": 0.9, "own_gate_auc": 0.6, "rows": 10, "refusal_rows": 4}
    record_evidence_gate(folder, "gq", 1.0, calibration)  # the expert scores itself here
    record_evidence_gate(folder, "gq", 1.0, calibration)  # a rewrite replaces the section
    card = (folder / "README.md").read_text()
    assert card.count("## Evidence gate") == 1 and ">= 1.000" in card
    assert json.loads((folder / EXPERT_METADATA).read_text())["evidence_gate"]["expert"] == "gq"
    llm.add_expert("gq", folder)

    class Store:
        def query(self, text, k=4):
            return [Document("Paris is in France.", id="a"), Document("Rome.", id="b")][:k]

    pipe = RAGPipeline(llm, Store(), k=2, expert="gq", max_new_tokens=4, evidence_gate="auto")
    answer = pipe.answer("Where is Paris?")
    assert pipe.evidence_gate is not None and pipe.evidence_gate.threshold == 1.0
    assert answer.text == REFUSAL and answer.completion_tokens == 0  # nothing reaches 1.0
    assert len(answer.evidence) == 2 and all(0.0 <= p < 1.0 for p in answer.evidence)
    pipe.evidence_gate.threshold = 0.0  # every question passes: the expert answers
    answer = pipe.answer("Where is Paris?")
    assert answer.completion_tokens > 0 and answer.text != REFUSAL  # its refusal is barred
    rows = [{"meta": {"question": "Where is Paris?", "passages": ["Paris is in France."]}}]
    assert len(evidence_scores(pipe.evidence_gate.scorer, rows)[0]) == 1
    with pytest.raises(InputError, match="row 0"):
        evidence_scores(pipe.evidence_gate.scorer, [{"meta": {}}])


def test_recorded_decoding_is_served(tmp_path):
    from expertrag.models.llm import EXPERT_METADATA
    from expertrag.training.gate import record_decoding

    llm = tiny_llm()
    folder = tmp_path / "gq"
    train_expert(llm.loaded, label_rows(8), None,
                 config(tmp_path, output_dir=str(folder), epochs=1, eval_fraction=0.0))
    record_decoding(folder, 2)
    record_decoding(folder, 3, "Measured: somewhere.")  # a rewrite replaces the section
    card = (folder / "README.md").read_text()
    assert card.count("## Decoding") == 1 and "3 beams" in card and "Measured" in card
    assert json.loads((folder / EXPERT_METADATA).read_text())["decoding"] == {"num_beams": 3}
    llm.add_expert("gq", folder)
    assert llm.expert_info("gq")["num_beams"] == 3
    with pytest.raises(InputError, match="num_beams"):
        record_decoding(folder, 0)


def test_evidence_floor_counts_rows_refused_anyway_and_says_when_no_floor_fits():
    from expertrag.errors import InputError
    from expertrag.training.gate import pick_evidence_threshold

    best, refuse = [0.9, 0.8, 0.2, 0.1], [False, False, True, True]
    got = pick_evidence_threshold(best, refuse, 0.0, refused_anyway=[False, False, False, True])
    assert got["at_threshold"]["refusal_accuracy"] == 1.0 and 0.2 < got["threshold"] <= 0.8
    with pytest.raises(InputError, match="no threshold keeps false refusals"):
        pick_evidence_threshold(best, refuse, 0.0, refused_anyway=[True, False, False, False])
    with pytest.raises(InputError, match="one entry per row"):
        pick_evidence_threshold(best, refuse, refused_anyway=[True])
