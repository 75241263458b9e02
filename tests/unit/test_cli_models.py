"""The CLI with real (tiny, self-made) models: ``--model DIR``, ``--expert ADAPTER_FOLDER``,
``--embedding-model DIR``, ``--quiet`` silencing the loaders' bars, and typed errors for a
missing model or a damaged adapter. Nothing is faked: the models are built in the test."""

from __future__ import annotations

import json

import pytest
from tiny_models import save_tiny_embedder, save_tiny_lora, save_tiny_model, tiny_llm

from expertrag import cli


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    base = save_tiny_model(str(root / "base"))
    embedder = save_tiny_embedder(str(root / "embedder"))
    adapter = save_tiny_lora(tiny_llm(), str(root / "experts" / "my-qa"))
    return {"base": base, "embedder": embedder, "adapter": adapter, "root": root}


@pytest.fixture
def kb(tmp_path, models, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "fees.md").write_text("The annual fee is 45 euros.", encoding="utf-8")
    (corpus / "steps.md").write_text("There are 117 steps in the tower.", encoding="utf-8")
    db = str(tmp_path / "db")
    assert cli.main(["ingest", str(corpus), "--db", db, "--quiet",
                     "--embedding-model", models["embedder"]]) == 0
    assert "2 added" in capsys.readouterr().out
    return db


def _ask(db, models, *extra):
    return cli.main(["ask", "What is the fee?", "--db", db, "--model", models["base"],
                     "--dtype", "float32", "--max-new-tokens", "4", *extra])


def test_own_base_expert_and_embedder_from_folders(kb, models, capsys):
    from expertrag.retrieval import VectorStore

    assert VectorStore(path=kb, read_only=True).manifest.embedding == models["embedder"]
    assert _ask(kb, models, "--expert", models["adapter"], "--json", "--quiet") == 0
    (entry,) = json.loads(capsys.readouterr().out)
    assert entry["expert"] == "my-qa" and entry["error"] is None
    # ask embedded the question with the model the collection was ingested with
    assert entry["citations"] and entry["citations"][0]["source"] in {"fees.md", "steps.md"}


def test_quiet_silences_the_loading_bars(kb, models, capsys):
    assert _ask(kb, models, "--expert", models["adapter"]) == 0
    assert "Loading weights" in capsys.readouterr().err  # the bar a user sees by default
    assert _ask(kb, models, "--expert", models["adapter"], "--quiet") == 0
    assert "Loading weights" not in capsys.readouterr().err


def test_a_truncated_adapter_is_one_typed_error(kb, models, capsys, tmp_path):
    import shutil

    broken = tmp_path / "broken-qa"
    shutil.copytree(models["adapter"], broken)
    weights = broken / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    assert _ask(kb, models, "--expert", str(broken), "--quiet") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: expert 'broken-qa'")
    assert "damaged or truncated" in err and "Traceback" not in err


@pytest.mark.parametrize(("flag", "value", "needle"), [
    ("--model", "missing-dir/", "unknown model"),
    ("--model", "notes.txt", "model path not found"),
    ("--model", "weights.gguf", "GGUF file not found"),
    ("--embedding-model", "no-such-embedder/", "cannot load embedding model"),
])
def test_a_model_that_cannot_load_is_one_typed_error(kb, models, capsys, tmp_path,
                                                     monkeypatch, flag, value, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not a model")
    argv = ["ask", "fee?", "--db", kb, "--quiet", "--model", models["base"], flag, value]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1] and "unexpected" not in err[-1]
    assert "question 1" not in err[-1]  # not a question's fault: one error, up front
    assert all(line.startswith("warning: ") for line in err[:-1])
