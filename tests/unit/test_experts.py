"""The experts package: names, the one auto-attach rule, the card (read, check, write), and
the old import paths of what moved there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from expertrag.errors import ExpertError, UnknownExpertError
from expertrag.experts import (
    CRITIC,
    EXPERT_METADATA,
    GROUNDED_QA,
    HOP,
    RELEVANCE,
    SHIPPED_NAMES,
    ExpertCard,
    ensure_attached,
    shipped_experts,
)
from expertrag.experts.card import update_card


class Attaching:
    """A stand-in LLM recording what it is asked to attach."""

    def __init__(self, experts: list[str] | None = None) -> None:
        self.experts = list(experts or [])
        self.added: list[tuple[str, object]] = []

    def add_expert(self, name: str, path: object) -> None:
        self.added.append((name, path))
        self.experts.append(name)


def test_names_are_the_shipped_folders():
    assert (GROUNDED_QA, RELEVANCE, CRITIC, HOP) == ("grounded-qa", "relevance", "critic", "hop")
    assert set(shipped_experts()) <= set(SHIPPED_NAMES) == {GROUNDED_QA, RELEVANCE, CRITIC, HOP}


def test_ensure_attached_attaches_once_and_names_the_unknown():
    llm = Attaching()
    assert ensure_attached(llm, "a", {"a": "/x/a"}) == "a"
    assert ensure_attached(llm, "a", {"a": "/x/a"}) == "a"  # already there: left as it is
    assert llm.added == [("a", "/x/a")]
    with pytest.raises(UnknownExpertError, match="nope"):
        ensure_attached(llm, "nope", {"a": "/x/a"})
    assert ensure_attached(Attaching(["own"]), "own", {}) == "own"  # attached, not shipped


def test_card_round_trip_and_atomic_write(tmp_path: Path):
    assert ExpertCard.read(tmp_path) == ExpertCard()  # no card: an empty one
    card = ExpertCard(name="x", base={"name": "b", "fingerprint": "f"},
                      refusal_gate={"text": "I don't know.", "threshold": 0.4},
                      decoding={"num_beams": 3})
    card.write(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [EXPERT_METADATA]  # no temp file left
    again = ExpertCard.read(tmp_path, "x")
    assert again == card and again.gate == ("I don't know.", 0.4) and again.num_beams == 3
    assert again.fingerprint == "f"
    assert json.loads((tmp_path / EXPERT_METADATA).read_text()) == card.to_dict()
    assert "evidence_gate" not in card.to_dict()  # unset fields are not written
    update_card(tmp_path, shrunk={"rank": 4})
    assert ExpertCard.read(tmp_path).shrunk == {"rank": 4}


@pytest.mark.parametrize(("data", "match"), [
    ({"colour": "red"}, "unknown fields"),
    ({"name": 3}, "name must be str"),
    ({"base": "b"}, "base"),
    ({"decoding": {"num_beams": 0}}, "num_beams"),
    ({"decoding": "three"}, "num_beams"),
    ({"refusal_gate": {"threshold": 0.5}}, "refusal_gate"),
    ({"evidence_gate": {"expert": "relevance", "threshold": 2}}, "evidence_gate"),
    ({"adapter_bytes": True}, "adapter_bytes"),
])
def test_a_bad_card_is_an_expert_error(tmp_path: Path, data, match):
    (tmp_path / EXPERT_METADATA).write_text(json.dumps(data))
    with pytest.raises(ExpertError, match=match):
        ExpertCard.read(tmp_path, "x")
    with pytest.raises(ExpertError, match="unknown fields"):
        ExpertCard().updated(colour="red")


def test_a_damaged_card_names_the_expert_and_folder(tmp_path: Path):
    (tmp_path / EXPERT_METADATA).write_text("{oops")
    with pytest.raises(ExpertError, match=r"expert 'x': unreadable"):
        ExpertCard.read(tmp_path, "x")


def test_the_shipped_cards_read_clean():
    for name, folder in shipped_experts().items():
        card = ExpertCard.read(folder, name)
        assert card.name == name and card.fingerprint


def test_the_server_client_checks_a_card_it_can_read(tmp_path: Path):
    from expertrag.models.server import ServerLLM

    (tmp_path / EXPERT_METADATA).write_text(json.dumps({"refusal_gate": {"threshold": 2}}))
    with pytest.raises(ExpertError, match="refusal_gate"):
        ServerLLM._local_card("bad", tmp_path)
    assert ServerLLM._local_card("remote", tmp_path / "only-on-the-server") is None


def test_old_import_paths_give_the_same_objects():
    import expertrag
    import expertrag.chains as chains
    import expertrag.chains.naive as naive
    import expertrag.experts.critic as critic
    import expertrag.experts.grounded_qa as grounded_qa
    import expertrag.experts.relevance as relevance
    import expertrag.rag as rag
    import expertrag.reflection as reflection
    from expertrag.rerank.llm import RELEVANCE_PROMPT
    from expertrag.training import data

    for name in ("RAGPipeline", "EvidenceGate", "Answer", "generate_grounded",
                 "EVIDENCE_GATE_KEY"):
        assert getattr(rag, name) is getattr(naive, name)
    assert chains.RAGPipeline is rag.RAGPipeline is expertrag.RAGPipeline
    for name in ("REFUSAL", "INSTRUCTIONS", "build_messages", "is_refusal", "strip_citations",
                 "select_citations", "tidy_citations", "parse_citations", "format_passages"):
        assert getattr(rag, name) is getattr(grounded_qa, name)
    for name in ("LABELS", "PROMPTS", "Judgement", "critic_messages", "UTILITY_WEIGHTS"):
        assert getattr(reflection, name) is getattr(critic, name)
    assert RELEVANCE_PROMPT is relevance.RELEVANCE_PROMPT
    assert data.relevance_messages is relevance.relevance_messages
    assert data.grounded_answer is grounded_qa.grounded_answer
    assert data.RELEVANCE_LABELS is relevance.RELEVANCE_LABELS


def test_the_experts_floor_imports_only_errors_and_types():
    import ast

    root = Path(__import__("expertrag.experts").experts.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("expertrag"):
                assert node.module.split(".")[1] in {"errors", "types", "experts"}, path


def test_the_model_layer_imports_no_pipeline():
    import ast

    above = {"rag", "chains", "graph", "reflection", "rerank", "retrieval", "training",
             "evaluation", "langchain", "llama_index", "cli", "ingest"}
    root = Path(__import__("expertrag.models").models.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("expertrag."):
                assert node.module.split(".")[1] not in above, (path.name, node.module)
