"""The ``expertrag`` command with a fake embedder and a fake LLM."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

import pytest

from expertrag import cli
from expertrag.errors import UnknownExpertError
from expertrag.retrieval import VectorStore


class HashEmbedder:
    def _vec(self, text: str) -> list[float]:
        v = [0.0] * 32
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % 32] += 1.0
        v[0] += 1e-3
        return v

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


@dataclass
class FakeResult:
    text: str
    expert: str | None
    prompt_tokens: int = 50
    completion_tokens: int = 5
    finish_reason: str = "stop"


class FakeLLM:
    def __init__(self, experts: list[str] | None = None) -> None:
        self.experts = list(experts or [])
        self.attached: list[tuple[str, object]] = []
        self.batches: list[int] = []

    def add_expert(self, name: str, source: object) -> None:
        self.attached.append((name, source))
        self.experts.append(name)

    def generate(self, messages_or_batch, *, expert=None, **_kwargs):
        if expert is not None and expert not in self.experts:
            raise UnknownExpertError(f"expert {expert!r} is not attached")
        if isinstance(messages_or_batch[0], list):
            self.batches.append(len(messages_or_batch))
            return [FakeResult("Answer [1].", expert) for _ in messages_or_batch]
        return FakeResult("Answer [1].", expert)


@pytest.fixture
def fakes(monkeypatch):
    llms: list[FakeLLM] = []

    def make_llm(model: str, server: str | None = None, dtype: str | None = None,
                 backend: str | None = None, layout: str | None = None) -> FakeLLM:
        llms.append(FakeLLM())
        llms[-1].dtype, llms[-1].backend, llms[-1].layout = dtype, backend, layout
        return llms[-1]

    def make_store(db: str, collection: str, *, read_only: bool = False,
                   embedding_model: str | None = None) -> VectorStore:
        return VectorStore(path=db, collection=collection, embedder=HashEmbedder(),
                           read_only=read_only)

    monkeypatch.setattr(cli, "make_store", make_store)
    monkeypatch.setattr(cli, "make_llm", make_llm)
    monkeypatch.setattr(cli, "shipped_experts", dict)
    return llms


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "fees.md").write_text("# Fees\n\nThe annual fee is 45 euros.", encoding="utf-8")
    (folder / "steps.md").write_text("There are 117 steps in the tower.", encoding="utf-8")
    return folder


def _assert_one_line_error(capsys, *needles: str) -> None:
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_ask_without_database_exits_2(tmp_path, capsys):
    assert cli.main(["ask", "What?", "--db", str(tmp_path / "nodb")]) == 2
    _assert_one_line_error(capsys, "ingest")
    assert not (tmp_path / "nodb").exists()


def test_ask_on_empty_collection_exits_2(tmp_path, capsys, fakes):
    VectorStore(path=tmp_path / "db", embedder=HashEmbedder())  # creates an empty db
    assert cli.main(["ask", "What?", "--db", str(tmp_path / "db")]) == 2
    _assert_one_line_error(capsys, "empty", "ingest")
    assert fakes == []  # no model was built


def test_ingest_errors_exit_2(tmp_path, capsys, fakes):
    assert cli.main(["ingest", str(tmp_path / "missing"), "--db", str(tmp_path / "db")]) == 2
    _assert_one_line_error(capsys, "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.txt").write_bytes(b"\xff\xfe\xfa")
    assert cli.main(["ingest", str(tmp_path / "bad"), "--db", str(tmp_path / "db")]) == 2
    _assert_one_line_error(capsys, "broken.txt", "UTF-8")


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["ask"])
    assert info.value.code == 2


def test_ingest_then_ask(tmp_path, capsys, corpus, fakes):
    db = str(tmp_path / "db")
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet", "--chunk-size", "200"]) == 0
    assert "ingested 2 files as 2 chunks" in capsys.readouterr().out

    assert cli.main(["ask", "What is the annual fee?", "--db", db, "--k", "2"]) == 0
    out = capsys.readouterr().out
    assert "Q: What is the annual fee?" in out
    assert "A: Answer [1]." in out
    assert '[1] corpus/fees.md, chunk 0: "# Fees The annual fee is 45 euros."' in out
    assert "base model" in out

    assert cli.main(["ask", "fee?", "steps?", "--db", db, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["question"] for d in data] == ["fee?", "steps?"]
    assert data[0]["citations"][0]["source"] in {"fees.md", "steps.md"}
    assert data[0]["citations"][0]["cited"] is True
    assert fakes[-1].batches == [2]  # two questions -> one batched generate call
    assert fakes[-1].dtype is None  # ExpertLLM picks the dtype

    assert cli.main(["ask", "fee?", "--db", db, "--dtype", "float32"]) == 0
    assert fakes[-1].dtype == "float32"  # --dtype reaches the model
    assert fakes[-1].backend is None
    assert cli.main(["ask", "fee?", "--db", db, "--backend", "llamacpp"]) == 0
    assert fakes[-1].backend == "llamacpp"  # --backend reaches make_llm
    assert cli.main(["ask", "fee?", "--db", db, "--backend", "llamacpp", "--layout",
                     "merged"]) == 0
    assert fakes[-1].layout == "merged"  # and --layout


def test_unknown_expert_exits_2(tmp_path, capsys, corpus, fakes):
    db = str(tmp_path / "db")
    cli.main(["ingest", str(corpus), "--db", db, "--quiet"])
    capsys.readouterr()
    assert cli.main(["ask", "fee?", "--db", db, "--expert", "nope"]) == 2
    _assert_one_line_error(capsys, "nope")


def test_demo_answers_the_sample_questions(tmp_path, capsys, fakes):
    assert cli.main(["demo", "--db", str(tmp_path / "demo"), "--quiet"]) == 0
    out = capsys.readouterr().out
    questions = cli.sample_questions()
    assert len(questions) == 5
    assert out.count("Q: ") == 5
    assert "demo: ingested 7 sample documents" in out
    assert fakes[-1].batches == [5]
    assert "demo: 0 of 5 answers are right, 0 of them with citations" in out  # "Answer [1]."


def test_sample_answers_cover_every_sample_question():
    expected = cli.sample_answers()
    assert set(expected) == set(cli.sample_questions())
    assert cli.check_sample_answer("When was the Saltmere Head lighthouse built?",
                                   "It was built in 1862 [1].")
    assert not cli.check_sample_answer("When was the Saltmere Head lighthouse built?",
                                       "I don't know.")
    assert cli.check_sample_answer("What is the character of the Saltmere Head light?",
                                   "Two white flashes every ten seconds [2].")
    assert cli.check_sample_answer("Who?", "x") is None


def test_demo_in_a_temporary_db(capsys, fakes):
    assert cli.main(["demo", "--quiet", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 5


def test_choose_expert(monkeypatch):
    assert cli.choose_expert(FakeLLM(["grounded-qa"]), None) == "grounded-qa"
    monkeypatch.setattr(cli, "shipped_experts", dict)
    assert cli.choose_expert(FakeLLM(), None) is None
    with pytest.raises(UnknownExpertError, match="'custom'; choose one of: none"):
        cli.choose_expert(FakeLLM(), "custom")
    assert cli.choose_expert(object(), "custom") == "custom"  # cannot list: passed on
    monkeypatch.setattr(cli, "shipped_experts", lambda: {"grounded-qa": "/experts/gqa"})
    llm = FakeLLM()
    assert cli.choose_expert(llm, None) == "grounded-qa"
    assert llm.attached == [("grounded-qa", "/experts/gqa")]


def test_shipped_experts_is_empty_without_the_module():
    assert isinstance(cli.shipped_experts(), dict)


def test_server_option_and_environment_pick_the_server_client(monkeypatch):
    from expertrag.models.llm import ExpertLLM
    from expertrag.models.server import ServerLLM

    monkeypatch.delenv("EXPERTRAG_SERVER_URL", raising=False)
    args = cli.build_parser().parse_args(["ask", "q?", "--server", "http://127.0.0.1:9/v1"])
    assert args.server == "http://127.0.0.1:9/v1"
    llm = cli.make_llm(args.model, args.server)
    assert isinstance(llm, ServerLLM) and llm.base_url == "http://127.0.0.1:9"
    monkeypatch.setenv("EXPERTRAG_SERVER_URL", "http://127.0.0.1:10")
    assert cli.make_llm("any").base_url == "http://127.0.0.1:10"
    monkeypatch.delenv("EXPERTRAG_SERVER_URL")
    assert isinstance(cli.make_llm("smollm2-135m-instruct"), ExpertLLM)


def test_dtype_option_reaches_the_model(monkeypatch):
    from expertrag.models.llm import ExpertLLM

    monkeypatch.delenv("EXPERTRAG_SERVER_URL", raising=False)
    args = cli.build_parser().parse_args(["ask", "q?", "--dtype", "float32"])
    llm = cli.make_llm(args.model, args.server, dtype=args.dtype)
    assert isinstance(llm, ExpertLLM) and llm._load_kwargs["dtype"] == "float32"
    assert cli.build_parser().parse_args(["ask", "q?"]).dtype is None
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["ask", "q?", "--dtype", "float64"])


def test_ingest_reports_every_bad_file_and_skip_invalid_ingests_the_rest(tmp_path, capsys,
                                                                          corpus, fakes):
    (corpus / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (corpus / "sub").mkdir()
    (corpus / "sub" / "blank.md").write_text("  \n", encoding="utf-8")
    db = str(tmp_path / "db")
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: 2 of 4 files") and "--skip-invalid" in err
    assert "latin1.txt is not valid UTF-8" in err and "sub/blank.md is empty" in err
    assert not (tmp_path / "db").exists() or VectorStore(
        path=db, embedder=HashEmbedder()).count() == 0  # strict: nothing was written

    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet", "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "ingested 2 files" in out
    assert "2 refused" in out and "refused (not ingested):" in out
    assert "  latin1.txt is not valid UTF-8 text (byte 3)" in out
    assert "  sub/blank.md is empty" in out


def test_unknown_expert_names_the_shipped_experts(tmp_path, capsys, corpus, fakes,
                                                  monkeypatch):
    monkeypatch.setattr(cli, "shipped_experts",
                        lambda: {"grounded-qa": "/x/gqa", "critic": "/x/critic"})
    db = str(tmp_path / "db")
    cli.main(["ingest", str(corpus), "--db", db, "--quiet"])
    capsys.readouterr()
    assert cli.main(["ask", "fee?", "--db", db, "--expert", "nope"]) == 2
    err = capsys.readouterr().err
    assert err == "error: unknown expert 'nope'; choose one of: critic, grounded-qa\n"
    assert "none attached" not in err
    with pytest.raises(UnknownExpertError, match="choose one of: mine"):
        monkeypatch.setattr(cli, "shipped_experts", dict)
        cli.choose_expert(FakeLLM(["mine"]), "other")


@pytest.mark.parametrize("command", [None, "ingest", "ask", "demo", "train", "eval"])
def test_help_shows_an_example(capsys, command):
    with pytest.raises(SystemExit) as info:
        cli.main([command, "--help"] if command else ["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:\n  expertrag " + (command or "") in out
    if command == "ingest":
        assert "--skip-invalid" in out


def test_an_answer_shows_its_evidence_and_a_refusal_by_the_gate():
    from expertrag.cli import answer_to_dict, format_answer
    from expertrag.rag import REFUSAL, Answer
    from expertrag.types import Document

    doc = Document("Rome.", id="a", metadata={"source": "a.md", "chunk_index": 0,
                                               "passage": 1, "cited": False})
    refused = Answer(REFUSAL, [doc], "grounded-qa", 0, 0, "Q?", [doc], "stop", [0.31])
    text = format_answer(refused)
    assert "best passage P(relevant) 0.31" in text and "refused without generating" in text
    assert answer_to_dict(refused)["evidence"] == [0.31]
    answered = Answer("Rome [1].", [doc], "grounded-qa", 50, 4, "Q?", [doc], "stop", [0.9])
    assert "refused" not in format_answer(answered)
    plain = Answer("Rome [1].", [doc], None, 50, 4, "Q?", [doc], "stop")
    assert "P(relevant)" not in format_answer(plain) and answer_to_dict(plain)["evidence"] is None


def test_evidence_gate_flag_asks_the_pipeline_for_the_experts_gate(tmp_path, capsys, corpus,
                                                                   fakes, monkeypatch):
    import expertrag.rag as rag

    seen = []

    class Spy(rag.RAGPipeline):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs.get("evidence_gate"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(rag, "RAGPipeline", Spy)
    db = str(tmp_path / "db")
    cli.main(["ingest", str(corpus), "--db", db, "--quiet"])
    assert cli.main(["ask", "fee?", "--db", db, "--evidence-gate"]) == 0
    assert cli.main(["ask", "fee?", "--db", db]) == 0
    assert seen == ["auto", None]
    assert "A: Answer [1]." in capsys.readouterr().out  # the fake expert-less LLM: no gate


# -- everyday use: read-only ask, per-question results, typed errors (issue 41) ---------------
def _ingest(corpus, db, capsys) -> None:
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet"]) == 0
    capsys.readouterr()


def test_ask_with_a_mistyped_collection_creates_nothing(tmp_path, capsys, corpus, fakes):
    db = str(tmp_path / "db")
    _ingest(corpus, db, capsys)
    assert cli.main(["ask", "fee?", "--db", db, "--collection", "expertrgg"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: no collection 'expertrgg'")
    assert "'expertrag'" in err  # names the collections that are there
    store = VectorStore(path=db, embedder=HashEmbedder())
    assert [c.name for c in store.client.list_collections()] == ["expertrag"]
    assert fakes == []  # refused before any model was built


def test_ask_on_an_empty_folder_or_a_file_creates_nothing(tmp_path, capsys, fakes):
    empty = tmp_path / "emptydir"
    empty.mkdir()
    assert cli.main(["ask", "fee?", "--db", str(empty)]) == 2
    _assert_one_line_error(capsys, "no database at", "ingest")
    assert list(empty.iterdir()) == []
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv in (["ask", "fee?", "--db", str(afile)],
                 ["ingest", str(tmp_path), "--db", str(afile)]):
        assert cli.main(argv) == 2
        _assert_one_line_error(capsys, "is a file, not a folder")
    assert afile.read_text() == "x"


def test_ask_on_a_damaged_database_is_one_error_line(tmp_path, capsys, corpus, fakes):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "chroma.sqlite3").write_bytes(b"not sqlite" * 500)
    assert cli.main(["ask", "fee?", "--db", str(folder)]) == 2
    _assert_one_line_error(capsys, "damaged", "new --db")


class WindowLLM(FakeLLM):
    """Refuses any conversation that holds the word LONG, as a too-long prompt would be."""

    def generate(self, messages_or_batch, *, expert=None, **kwargs):
        from expertrag.errors import ContextWindowExceededError

        batch = messages_or_batch if isinstance(messages_or_batch[0], list) \
            else [messages_or_batch]
        for i, conv in enumerate(batch):
            if "LONG" in conv[-1]["content"]:
                which = "the prompt" if len(batch) == 1 else f"prompts[{i}]"
                raise ContextWindowExceededError(f"{which} has 20330 tokens; the context "
                                                 "window is 8192")
        return super().generate(messages_or_batch, expert=expert, **kwargs)


def test_one_bad_question_fails_alone_and_json_stays_valid(tmp_path, capsys, corpus, fakes,
                                                           monkeypatch):
    db = str(tmp_path / "db")
    _ingest(corpus, db, capsys)
    monkeypatch.setattr(cli, "make_llm", lambda *a, **k: WindowLLM())
    argv = ["ask", "fee?", "  ", "LONG steps?", "steps?", "--db", db, "--json", "--quiet"]
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [d["number"] for d in data] == [1, 2, 3, 4]
    assert [d["error"] is None for d in data] == [True, False, False, True]
    assert data[0]["answer"] == "Answer [1]." and data[3]["citations"]
    assert data[1]["error"] == {"type": "InputError", "message": "question 2 is empty"}
    window = data[2]["error"]
    assert window["type"] == "ContextWindowExceededError"
    assert window["message"].startswith("question 3: the prompt has 20330 tokens")
    assert "--k" in window["message"]  # what to do
    err = captured.err.splitlines()
    assert err[:2] == ["error: question 2 is empty", "error: " + window["message"]]
    assert err[2] == "answered 2 of 4 questions"
    # the same without --json: the good answers are printed, each error on its own line
    assert cli.main([*argv[:-2], "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out.count("Q: ") == 2 and "error: question 3:" in captured.err


def test_json_is_valid_even_when_the_store_is_missing(tmp_path, capsys, fakes):
    assert cli.main(["ask", "a?", "b?", "--db", str(tmp_path / "none"), "--json"]) == 2
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert [d["question"] for d in data] == ["a?", "b?"]
    assert all(d["error"]["type"] == "MissingStoreError" for d in data)
    assert captured.err.count("error: ") == 2


def test_several_questions_show_progress(tmp_path, capsys, corpus, fakes):
    db = str(tmp_path / "db")
    _ingest(corpus, db, capsys)
    assert cli.main(["ask", "fee?", "steps?", "--db", db]) == 0
    assert "answering" in capsys.readouterr().err
    assert cli.main(["ask", "fee?", "steps?", "--db", db, "--quiet"]) == 0
    assert "answering" not in capsys.readouterr().err


def test_expert_takes_an_adapter_folder(tmp_path, capsys, corpus, fakes):
    db = str(tmp_path / "db")
    _ingest(corpus, db, capsys)
    adapter = tmp_path / "experts" / "my-qa"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (adapter / "expertrag_expert.json").write_text('{"name": "my-grounded-qa"}')
    assert cli.main(["ask", "fee?", "--db", db, "--expert", str(adapter)]) == 0
    assert fakes[-1].attached == [("my-grounded-qa", adapter)]
    assert "expert my-grounded-qa" in capsys.readouterr().out
    (adapter / "expertrag_expert.json").unlink()  # no card: the folder's name
    assert cli.main(["ask", "fee?", "--db", db, "--expert", str(adapter)]) == 0
    assert fakes[-1].attached == [("my-qa", adapter)]
    capsys.readouterr()
    for bad, needle in ((tmp_path / "experts" / "nope", "no such adapter folder"),
                        (tmp_path / "experts", "not an adapter folder")):
        assert cli.main(["ask", "fee?", "--db", db, "--expert", str(bad)]) == 2
        _assert_one_line_error(capsys, needle)


def test_a_bug_is_still_one_error_line(tmp_path, capsys, corpus, fakes, monkeypatch):
    class Broken(FakeLLM):
        def generate(self, *args, **kwargs):
            raise RuntimeError("kaput")

    db = str(tmp_path / "db")
    _ingest(corpus, db, capsys)
    monkeypatch.setattr(cli, "make_llm", lambda *a, **k: Broken())
    monkeypatch.delenv("EXPERTRAG_DEBUG", raising=False)
    assert cli.main(["ask", "fee?", "--db", db]) == 2
    _assert_one_line_error(capsys, "unexpected RuntimeError: kaput", "EXPERTRAG_DEBUG")


def test_ingest_reports_each_outcome_and_why(tmp_path, capsys, corpus, fakes):
    db = str(tmp_path / "db")
    (corpus / "zeros.txt").write_bytes(b"\x00" * 32)
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet", "--skip-invalid"]) == 0
    out = capsys.readouterr().out
    assert "2 added, 0 updated, 0 skipped (unchanged), 0 pruned, 1 refused" in out
    assert "added:\n  fees.md\n  steps.md\n" in out
    assert "refused (not ingested):\n  zeros.txt holds NUL bytes" in out
    (corpus / "steps.md").write_text("There are 118 steps now.", encoding="utf-8")
    (corpus / "fees.md").unlink()
    (corpus / "zeros.txt").unlink()
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "0 added, 1 updated, 0 skipped (unchanged), 0 pruned, 0 refused" in out
    assert "gone from the folder but still indexed (--prune removes them):\n  fees.md" in out
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet", "--prune"]) == 0
    out = capsys.readouterr().out
    assert "0 added, 0 updated, 1 skipped (unchanged), 1 pruned" in out
    assert "pruned (gone from the folder):\n  fees.md" in out
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet", "--source", "kb"]) == 0
    assert "1 added" in capsys.readouterr().out
    ids = VectorStore(path=db, embedder=HashEmbedder()).ids()
    assert sorted(ids) == sorted([f"{corpus.resolve().as_posix()}/steps.md#0",
                                  "kb/steps.md#0"])  # two sources, no collision
