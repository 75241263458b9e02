"""VectorStore and the framework skins against a real Chroma server (``chroma run``, the
server that ships with the chromadb package), not only the embedded client: writes, search,
deletes, data that outlives a server restart, and a typed error when no server answers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tiny_models import HashEmbedder, store_docs

from expertrag.errors import StoreConnectionError
from expertrag.retrieval import VectorStore
from expertrag.types import Document

DOCS = store_docs()

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chroma_cli() -> str:
    exe = Path(sys.executable).parent / "chroma"
    found = str(exe) if exe.exists() else shutil.which("chroma")
    if not found:
        pytest.skip("the chroma CLI (chromadb's server) is not installed")
    return found


class ChromaServer:
    """One ``chroma run`` process on a free port over a data folder; restartable."""

    def __init__(self, path: Path) -> None:
        self.path, self.port, self.proc = path, _free_port(), None
        self.log = path.parent / "chroma-server.log"

    def start(self) -> None:
        import httpx

        self.proc = subprocess.Popen(
            [_chroma_cli(), "run", "--path", str(self.path), "--host", "127.0.0.1",
             "--port", str(self.port)],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        while time.monotonic() - started < 60:
            if self.proc.poll() is not None:
                raise RuntimeError("chroma run exited: " + self.log.read_text()[-2000:])
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/api/v2/heartbeat",
                             timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("chroma run did not answer within 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
        self.proc = None


@pytest.fixture
def chroma(tmp_path: Path) -> Iterator[ChromaServer]:
    pytest.importorskip("httpx")
    server = ChromaServer(tmp_path / "chroma-data")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _store(server: ChromaServer, collection: str = "test") -> VectorStore:
    return VectorStore(collection=collection, embedder=HashEmbedder(), host="127.0.0.1",
                       port=server.port)


def test_add_query_delete_on_a_server(chroma: ChromaServer) -> None:
    store = _store(chroma)
    assert store.path is None  # nothing written locally
    assert store.add(DOCS) == ["a", "b", "c"]
    assert store.add(DOCS) == ["a", "b", "c"]  # upsert: idempotent
    assert store.count() == 3
    hits = store.query("when was the lighthouse built", k=2)
    assert hits[0].id == "a" and hits[0].metadata == {"src": "x"}
    assert [h.id for h in store.query("lighthouse", k=3, where={"src": "y"})] == ["b"]
    store.delete(["a"])
    assert store.count() == 2
    assert "a" not in [h.id for h in store.query("lighthouse granite", k=3)]
    # a second collection on the same server is separate
    assert _store(chroma, "other").count() == 0


def test_documents_outlive_a_server_restart(chroma: ChromaServer) -> None:
    _store(chroma).add([*DOCS, Document("Ferries leave every 40 minutes.", id="d")])
    chroma.stop()
    chroma.start()
    reopened = _store(chroma)
    assert reopened.count() == 4
    assert reopened.get(["c"])[0].text.startswith("Lantern Night")
    assert reopened.query("ferry timetable", k=1)[0].id == "d"


def test_no_server_is_a_typed_error_naming_where() -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(StoreConnectionError, match=f"127.0.0.1:{port}"):
        VectorStore(collection="test", embedder=HashEmbedder(), host="127.0.0.1", port=port)


def test_langchain_retriever_and_vectorstore_on_a_server(chroma: ChromaServer) -> None:
    pytest.importorskip("langchain_core")
    from expertrag.langchain import ExpertChromaRetriever

    store = _store(chroma)
    store.add(DOCS)
    retriever = ExpertChromaRetriever(store=store, k=1)
    docs = retriever.invoke("membership costs in euros")
    assert [d.metadata.get("id", d.id) for d in docs] == ["b"]

    pytest.importorskip("langchain_chroma")
    from expertrag.langchain import chroma_vectorstore

    vs: Any = chroma_vectorstore(collection="lc-docs", embedding=HashEmbedder(),
                                 host="127.0.0.1", port=chroma.port)
    vs.add_texts(["Lantern Night is in August.", "The ferry costs 3 euros."], ids=["x", "y"])
    assert vs.similarity_search("ferry price", k=1)[0].page_content.startswith("The ferry")
    # the collection is on the server: a plain VectorStore sees the same two rows
    assert _store(chroma, "lc-docs").count() == 2


def test_llama_index_retriever_on_a_server(chroma: ChromaServer) -> None:
    pytest.importorskip("llama_index.core")
    from expertrag.llama_index import ExpertRetriever

    store = _store(chroma)
    store.add(DOCS)
    nodes = ExpertRetriever(store=store, k=1).retrieve("Lantern Night August Saturday")
    assert nodes[0].node.node_id == "c" or nodes[0].node.metadata.get("id") == "c"


def test_ingest_syncs_a_folder_into_a_server(chroma: ChromaServer, tmp_path: Path) -> None:
    """The manifest lives in the collection's metadata on a server: skip, prune and the
    read-only open work there as in the embedded store."""
    from expertrag.errors import MissingStoreError
    from expertrag.ingest import ingest_folder

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text("The lighthouse was built in 1862.", encoding="utf-8")
    (folder / "b.md").write_text("Membership costs 45 euros.", encoding="utf-8")
    first = ingest_folder(folder, _store(chroma, "synced"), progress=False)
    assert first.added == ["a.md", "b.md"]
    again = ingest_folder(folder, _store(chroma, "synced"), progress=False)
    assert again.unchanged == ["a.md", "b.md"] and again.written == 0
    (folder / "b.md").unlink()
    pruned = ingest_folder(folder, _store(chroma, "synced"), progress=False, prune=True)
    assert pruned.pruned == ["b.md"] and _store(chroma, "synced").count() == 1
    reader = VectorStore(collection="synced", embedder=HashEmbedder(), host="127.0.0.1",
                         port=chroma.port, read_only=True)
    assert reader.manifest.exists and len(reader.manifest.files) == 1
    assert reader.query("lighthouse", k=1)[0].metadata["source"] == "a.md"
    with pytest.raises(MissingStoreError, match="'synced'"):
        VectorStore(collection="synched", embedder=HashEmbedder(), host="127.0.0.1",
                    port=chroma.port, read_only=True)
