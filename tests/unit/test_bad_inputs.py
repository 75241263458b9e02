"""The bad-input battery: walk the public API and the command line with bad arguments and
damaged files, and assert that every failure is an ``ExpertRAGError`` (a typed error naming
what was wrong), never a raw exception, and never a silent acceptance.

Each case is ``(name, call)``; ``call(env)`` must raise an ExpertRAGError. ``env`` holds a
filled store, a tiny model, damaged files and the like, built once per module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tiny_models import HashEmbedder, save_tiny_lora, store_docs, tiny_llm

from expertrag import cli
from expertrag.errors import ExpertRAGError
from expertrag.types import Document


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    from expertrag.ingest import ingest_folder
    from expertrag.retrieval import VectorStore

    root = tmp_path_factory.mktemp("battery")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "fees.md").write_text("The annual fee is 45 euros.", encoding="utf-8")
    (corpus / "bin.txt").write_bytes(b"\x00\x01\x02")
    (root / "afile").write_text("not a folder")
    (root / "emptydir").mkdir()
    store = VectorStore(path=root / "db", embedder=HashEmbedder())
    ingest_folder(corpus, store, progress=False, skip_invalid=True)
    # a damaged copy of a database (a fresh path: a fresh Chroma client)
    big = VectorStore(path=root / "big", embedder=HashEmbedder())
    big.add([Document(f"Document {i} on topic {i % 5}.", id=f"d{i}") for i in range(500)])
    shutil.copytree(root / "big", root / "broken")
    sqlite = root / "broken" / "chroma.sqlite3"
    with open(sqlite, "r+b") as handle:
        handle.seek(sqlite.stat().st_size // 2)
        handle.write(b"\xff" * 16384)
    (root / "notdb").mkdir()
    (root / "notdb" / "chroma.sqlite3").write_bytes(b"junk" * 100)
    llm = tiny_llm(max_positions=64)
    adapter = Path(save_tiny_lora(llm, str(root / "adapter")))
    truncated = root / "truncated"
    shutil.copytree(adapter, truncated)
    (truncated / "adapter_model.safetensors").write_bytes(
        (adapter / "adapter_model.safetensors").read_bytes()[:50])
    bad_card = root / "bad-card"
    shutil.copytree(adapter, bad_card)
    (bad_card / "expertrag_expert.json").write_text("{oops")
    pickled = root / "pickled"
    pickled.mkdir()
    (pickled / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04")
    qa = root / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Q?", "answer": "A"}) + "\n")
    return SimpleNamespace(root=root, corpus=corpus, store=store, llm=llm, adapter=adapter,
                           truncated=truncated, bad_card=bad_card, pickled=pickled, qa=qa)


def _store(env: Any, **kwargs: Any) -> Any:
    from expertrag.retrieval import VectorStore

    return VectorStore(embedder=HashEmbedder(), **kwargs)


def _graph_closed(env: Any) -> Any:
    pytest.importorskip("ladybug")
    from expertrag.graph import GraphRAG

    graph = GraphRAG(env.root / "graph", embedder=HashEmbedder())
    graph.close()
    return graph


def _pipeline(env: Any, **kwargs: Any) -> Any:
    from expertrag.rag import RAGPipeline

    return RAGPipeline(env.llm, env.store, **kwargs)


def _long_question(env: Any) -> Any:
    return _pipeline(env).answer_many(["fee?", "fee? " + "word " * 200])


def _ingest(env: Any, folder: Any, store: Any = None, **kwargs: Any) -> Any:
    from expertrag.ingest import ingest_folder

    return ingest_folder(folder, store if store is not None else env.store, progress=False,
                         **kwargs)


def _add_expert(env: Any, name: str, path: Any) -> Any:
    llm = tiny_llm(max_positions=64)
    return llm.add_expert(name, path)


def _eval_items(path: Any, **kwargs: Any) -> Any:
    from expertrag.evaluation.datasets import load_eval_items

    return load_eval_items(path, **kwargs)


def _judge(env: Any, cls: str, *args: Any, **kwargs: Any) -> Any:
    from expertrag.evaluation import judges

    return getattr(judges, cls)(*args, **kwargs)


CASES: list[tuple[str, Callable[[Any], Any]]] = [
    # -- the vector store
    ("store at a file", lambda e: _store(e, path=e.root / "afile")),
    ("read-only store at a file", lambda e: _store(e, path=e.root / "afile", read_only=True)),
    ("read-only store, no database", lambda e: _store(e, path=e.root / "none",
                                                      read_only=True)),
    ("read-only store, empty folder", lambda e: _store(e, path=e.root / "emptydir",
                                                       read_only=True)),
    ("read-only store, mistyped collection", lambda e: _store(
        e, path=e.root / "db", collection="expertrgg", read_only=True)),
    ("store, not a Chroma file", lambda e: _store(e, path=e.root / "notdb")),
    ("store, damaged database", lambda e: _store(e, path=e.root / "broken").check()),
    ("ingest into a damaged database", lambda e: _ingest(
        e, e.corpus, store=_store(e, path=e.root / "broken"), skip_invalid=True)),
    ("store, empty collection name", lambda e: _store(e, path=e.root / "db", collection="")),
    ("store, invalid collection name", lambda e: _store(e, path=e.root / "db",
                                                        collection="a")),
    ("store, embedder without methods", lambda e: __import__(
        "expertrag.retrieval", fromlist=["VectorStore"]).VectorStore(
            path=e.root / "db", embedder=object())),
    ("store, batch size 0", lambda e: _store(e, path=e.root / "db", batch_size=0)),
    ("add a string", lambda e: e.store.add("text")),
    ("add a non-document", lambda e: e.store.add([{"text": "x"}])),
    ("add a document without text", lambda e: e.store.add([Document(None)])),  # type: ignore
    ("query empty", lambda e: e.store.query("  ")),
    ("query k=0", lambda e: e.store.query("fee", k=0)),
    ("query k='3'", lambda e: e.store.query("fee", k="3")),
    ("query where not a dict", lambda e: e.store.query("fee", where="source")),
    ("query where malformed", lambda e: e.store.query("fee", where={"$bad": 1})),
    ("delete an int", lambda e: e.store.delete(5)),
    ("get non-string ids", lambda e: e.store.get([1, 2])),
    ("write to a read-only store", lambda e: _store(e, path=e.root / "db",
                                                    read_only=True).add(store_docs())),
    ("query an empty collection", lambda e: _store(e, path=e.root / "db",
                                                   collection="empty-one").query("x")),
    ("open_store, blank embedding model", lambda e: __import__(
        "expertrag.retrieval", fromlist=["open_store"]).open_store(e.root / "db",
                                                                  embedding_model=" ")),
    # -- ingest
    ("ingest a missing folder", lambda e: _ingest(e, e.root / "missing")),
    ("ingest a file", lambda e: _ingest(e, e.root / "afile")),
    ("ingest into no store", lambda e: _ingest(e, e.corpus, store=object())),
    ("ingest, chunk size 0", lambda e: _ingest(e, e.corpus, chunk_size=0)),
    ("ingest, overlap >= size", lambda e: _ingest(e, e.corpus, chunk_size=10,
                                                  chunk_overlap=10)),
    ("ingest, a binary file (strict)", lambda e: _ingest(e, e.corpus)),
    ("ingest, blank source", lambda e: _ingest(e, e.corpus, source="/")),
    ("ingest, a folder of nothing", lambda e: _ingest(e, e.root / "emptydir")),
    ("ingest into a read-only store", lambda e: _ingest(
        e, e.corpus, store=_store(e, path=e.root / "db", read_only=True), skip_invalid=True)),
    ("chunk a non-document", lambda e: __import__(
        "expertrag.ingest", fromlist=["chunk_documents"]).chunk_documents(["text"])),
    ("read a binary file", lambda e: __import__(
        "expertrag.ingest", fromlist=["read_text_file"]).read_text_file(e.corpus / "bin.txt")),
    ("split with float size", lambda e: __import__(
        "expertrag.ingest", fromlist=["split_text"]).split_text("text", 10.5, 1)),
    # -- models and experts
    ("model: blank", lambda e: __import__(
        "expertrag.models.loading", fromlist=["resolve_source"]).resolve_source("")),
    ("model: missing path", lambda e: __import__(
        "expertrag.models.loading", fromlist=["resolve_source"]).resolve_source("./nope")),
    ("model: a folder without config", lambda e: __import__(
        "expertrag.models.loading", fromlist=["resolve_source"]).resolve_source(
            str(e.root / "emptydir"))),
    ("model: a text file", lambda e: __import__(
        "expertrag.models.loading", fromlist=["load_base_model"]).load_base_model(
            str(e.root / "afile"))),
    ("model: a fake .gguf", lambda e: [
        (e.root / "fake.gguf").write_bytes(b"GGUF-not-really"),
        __import__("expertrag.models.loading", fromlist=["load_base_model"]).load_base_model(
            str(e.root / "fake.gguf"))]),
    ("model: a folder with a broken config", lambda e: [
        (e.root / "brokenmodel").mkdir(exist_ok=True),
        (e.root / "brokenmodel" / "config.json").write_text("{oops"),
        __import__("expertrag.models.loading", fromlist=["load_base_model"]).load_base_model(
            str(e.root / "brokenmodel"))]),
    ("ExpertLLM: bad speculative", lambda e: __import__(
        "expertrag.models.llm", fromlist=["ExpertLLM"]).ExpertLLM(speculative="fast")),
    ("generate: not messages", lambda e: e.llm.generate(42)),
    ("generate: bad role", lambda e: e.llm.generate([{"role": "wizard", "content": "x"}])),
    ("generate: max_new_tokens 0", lambda e: e.llm.generate("hi", max_new_tokens=0)),
    ("stream: unknown generation option", lambda e: list(e.llm.stream("hi", colour="blue"))),
    ("generate: unknown expert", lambda e: e.llm.generate("hi", expert="nobody")),
    ("generate: prompt too long", lambda e: e.llm.generate("word " * 200)),
    ("expert: invalid name", lambda e: _add_expert(e, "bad name!", e.adapter)),
    ("expert: missing folder", lambda e: _add_expert(e, "x", e.root / "nope")),
    ("expert: not a path", lambda e: _add_expert(e, "x", 42)),
    ("expert: truncated safetensors", lambda e: _add_expert(e, "x", e.truncated)),
    ("expert: damaged card", lambda e: _add_expert(e, "x", e.bad_card)),
    ("expert: pickle weights only", lambda e: _add_expert(e, "x", e.pickled)),
    ("expert: unknown shipped name", lambda e: __import__(
        "expertrag.experts", fromlist=["attach_shipped"]).attach_shipped(e.llm, ["nobody"])),
    ("embedder: blank model", lambda e: __import__(
        "expertrag.embeddings", fromlist=["Embedder"]).Embedder("")),
    ("embedder: batch size 0", lambda e: __import__(
        "expertrag.embeddings", fromlist=["Embedder"]).Embedder(batch_size=0)),
    ("embedder: a file as model", lambda e: __import__(
        "expertrag.embeddings", fromlist=["Embedder"]).Embedder(str(e.root / "afile"))
        .embed_query("x")),
    ("embedder: a string for texts", lambda e: __import__(
        "expertrag.embeddings", fromlist=["Embedder"]).Embedder().embed_documents("text")),
    # -- answering
    ("pipeline: no store", lambda e: _pipeline(e).__class__(e.llm, None)),
    ("pipeline: k=0", lambda e: _pipeline(e, k=0)),
    ("pipeline: bad gate", lambda e: _pipeline(e, evidence_gate="always")),
    ("answer: empty question", lambda e: _pipeline(e).answer("  ")),
    ("answer: not a string", lambda e: _pipeline(e).answer(42)),
    ("answer_many: a string", lambda e: _pipeline(e).answer_many("fee?")),
    ("answer_many: one question too long", _long_question),
    # -- graph
    ("GraphRAG used after close", lambda e: _graph_closed(e).retrieve("fee")),
    ("GraphRAG insert after close", lambda e: _graph_closed(e).insert(["x"], progress=False)),
    ("GraphStore without a path", lambda e: __import__(
        "expertrag.graph", fromlist=["GraphStore"]).GraphStore(None)),
    ("GraphRAG at a file", lambda e: __import__(
        "expertrag.graph", fromlist=["GraphRAG"]).GraphRAG(e.root / "afile",
                                                           embedder=HashEmbedder())),
    # -- evaluation
    ("eval data: missing", lambda e: _eval_items(e.root / "none.jsonl")),
    ("eval data: a folder", lambda e: _eval_items(e.root)),
    ("eval data: binary", lambda e: _eval_items(e.corpus / "bin.txt")),
    ("eval data: no passages", lambda e: _eval_items(e.qa, require_passages=True)),
    ("eval data: bad format", lambda e: _eval_items(e.qa, fmt="csv")),
    ("run_cases: nothing", lambda e: __import__(
        "expertrag.evaluation.runner", fromlist=["run_cases"]).run_cases([], {}, None)),
    ("judge: bad item", lambda e: _judge(e, "AnswerRelevanceJudge", embedder=HashEmbedder())(
        [42])),
    ("judge: bad method", lambda e: _judge(e, "AnswerRelevanceJudge", method="vibes")),
    ("judge: bad threshold", lambda e: _judge(e, "AnswerRelevanceJudge", threshold=2.0,
                                              embedder=HashEmbedder())),
]


@pytest.mark.parametrize(("name", "call"), CASES, ids=[name for name, _ in CASES])
def test_bad_input_raises_a_typed_error(env, name, call):
    try:
        call(env)
    except ExpertRAGError as exc:
        assert str(exc).strip(), f"{name}: an empty message"
        return
    except Exception as exc:  # the point: nothing raw may escape
        pytest.fail(f"{name}: raw {type(exc).__module__}.{type(exc).__name__}: {exc}")
    pytest.fail(f"{name}: accepted silently")


def test_errors_number_questions_one_way(env):
    """The issue saw ``prompt 0 has ... tokens`` beside ``question 1 is empty``: a single
    prompt is now "the prompt", a batch names ``prompts[i]`` like ``questions[i]``, and the
    CLI numbers questions from 1 as typed."""
    from expertrag.errors import ContextWindowExceededError, InputError

    with pytest.raises(ContextWindowExceededError, match=r"^the prompt has \d+ tokens"):
        env.llm.generate("word " * 200)
    with pytest.raises(ContextWindowExceededError, match=r"^prompts\[1\] has \d+ tokens"):
        env.llm.generate(["hi", "word " * 200])
    with pytest.raises(InputError, match=r"^questions\[1\] is empty"):
        _pipeline(env).answer_many(["fee?", " "])
    roomy = tiny_llm(max_positions=512)
    from expertrag.rag import RAGPipeline

    results = cli.answer_questions(RAGPipeline(roomy, env.store),
                                   ["fee?", "", "fee? " + "word " * 600])
    assert [str(r.error) if r.error else None for r in results][:2] == [
        None, "question 2 is empty"]
    assert str(results[2].error).startswith("question 3: the prompt has")


CLI_CASES = [
    ["ingest", "{root}/missing"],
    ["ingest", "{root}/afile"],
    ["ingest", "{root}/corpus", "--db", "{root}/afile"],
    ["ingest", "{root}/corpus", "--db", "{root}/notdb"],
    ["ingest", "{root}/corpus", "--db", "{root}/x", "--chunk-size", "0"],
    ["ingest", "{root}/corpus", "--db", "{root}/x"],  # bin.txt: strict refusal
    ["ingest", "{root}/corpus", "--db", "{root}/x", "--collection", "a"],
    ["ask", "fee?", "--db", "{root}/afile"],
    ["ask", "fee?", "--db", "{root}/emptydir"],
    ["ask", "fee?", "--db", "{root}/none"],
    ["ask", "fee?", "--db", "{root}/db", "--collection", "expertrgg"],
    ["ask", "fee?", "--db", "{root}/notdb"],
    ["ask", "fee?", "--db", "{root}/broken"],
    ["ask", "fee?", "--db", "{root}/db", "--k", "0"],
    ["ask", "fee?", "--db", "{root}/db", "--expert", "{root}/nope/"],
    ["ask", "fee?", "--db", "{root}/db", "--expert", "{root}/truncated"],
    ["ask", "fee?", "--db", "{root}/db", "--model", "{root}/afile"],
    ["ask", "fee?", "--db", "{root}/db", "--model", "./nope"],
    ["ask", " ", "--db", "{root}/db"],
    ["eval", "--data", "{root}/none.jsonl"],
    ["eval", "--data", "{root}/qa.jsonl"],
    ["eval", "--data", "{root}/qa.jsonl", "--pipelines", "nope"],
    ["eval", "--data", "{root}/qa.jsonl", "--judges", "vibes"],
    ["eval", "--data", "{root}/qa.jsonl", "--db", "{root}/none"],
    ["eval", "--data", "{root}/qa.jsonl", "--answers", "{root}/none.jsonl"],
    ["eval", "--data", "{root}/qa.jsonl", "--limit", "0"],
    ["eval", "--data", "{root}/corpus/bin.txt"],
]


@pytest.mark.parametrize("argv", CLI_CASES, ids=[" ".join(a[:3]) for a in CLI_CASES])
def test_bad_command_lines_print_one_error_and_exit_2(env, argv, capsys, monkeypatch):
    from tiny_models import save_tiny_model

    monkeypatch.delenv("EXPERTRAG_DEBUG", raising=False)
    model = env.root / "tiny-model"
    if not model.exists():
        save_tiny_model(str(model), max_positions=64)
    args = [a.format(root=env.root) for a in argv]
    if args[0] == "ask" and "--model" not in args:  # the tiny model: no download, no wait
        args += ["--model", str(model), "--dtype", "float32", "--max-new-tokens", "2"]
    capsys.readouterr()
    assert cli.main([*args, "--quiet"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()  # (a listing is indented)
           if not line.startswith(("warning: ", "  "))]
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "unexpected" not in err[0] and "Traceback" not in err[0]
