"""Ingest as a sync: folder-qualified ids, skipped unchanged files, prune, refusals with a
reason, and files written all-or-nothing (a crash at any point loses nothing and serves no
half-written file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tiny_models import HashEmbedder

from expertrag.errors import InputError, InvalidFilesError, StoreError
from expertrag.ingest import ingest_folder, load_folder, read_text_file
from expertrag.retrieval import VectorStore

TESTS = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


class CountingEmbedder(HashEmbedder):
    """Counts the texts it embeds; ``fail_after`` texts, it raises (a crash mid-ingest)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__()
        self.texts = 0
        self.fail_after = fail_after

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        if self.fail_after is not None and self.texts + len(texts) > self.fail_after:
            raise KeyboardInterrupt("killed mid-ingest")
        self.texts += len(texts)
        return super().embed_documents(texts)


def _store(tmp_path: Path, embedder=None, **kwargs) -> VectorStore:
    return VectorStore(path=tmp_path / "db", embedder=embedder or HashEmbedder(), **kwargs)


def _texts(store: VectorStore, query: str, k: int = 20) -> list[str]:
    return [d.text for d in store.query(query, k=k)]


def test_two_folders_with_the_same_relative_names_never_collide(tmp_path):
    _write(tmp_path / "a" / "notes.md", "Alpha: the lighthouse has 117 steps.")
    _write(tmp_path / "b" / "notes.md", "Beta: membership costs 45 euros.")
    store = _store(tmp_path)
    ingest_folder(tmp_path / "a", store, progress=False)
    ingest_folder(tmp_path / "b", store, progress=False)
    assert store.count() == 2
    texts = _texts(store, "notes")
    assert any("Alpha" in t for t in texts) and any("Beta" in t for t in texts)
    roots = {d.metadata["root"] for d in store.query("notes", k=2)}
    assert roots == {(tmp_path / "a").resolve().as_posix(), (tmp_path / "b").resolve().as_posix()}
    # a source name files the folder under that name instead of its path
    report = ingest_folder(tmp_path / "a", store, progress=False, source="handbook")
    assert report.added == ["notes.md"] and "handbook/notes.md#0" in store.ids()
    with pytest.raises(InputError, match="source"):
        ingest_folder(tmp_path / "a", store, progress=False, source=" / ")


def test_unchanged_files_are_skipped_changed_ones_replaced(tmp_path):
    folder = tmp_path / "docs"
    for i in range(5):
        _write(folder / f"f{i}.md", "\n\n".join(f"File {i} paragraph {j}." for j in range(6)))
    embedder = CountingEmbedder()
    store = _store(tmp_path, embedder)
    first = ingest_folder(folder, store, chunk_size=40, chunk_overlap=0, progress=False)
    assert len(first.added) == 5 and first.written == store.count() == embedder.texts
    embedded = embedder.texts
    again = ingest_folder(folder, store, chunk_size=40, chunk_overlap=0, progress=False)
    assert (again.added, again.updated, len(again.unchanged)) == ([], [], 5)
    assert embedder.texts == embedded and again.written == 0  # nothing embedded again
    assert (again.files, again.chunks) == (5, store.count())
    _write(folder / "f2.md", "Now short.")
    changed = ingest_folder(folder, store, chunk_size=40, chunk_overlap=0, progress=False)
    assert changed.updated == ["f2.md"] and len(changed.unchanged) == 4
    per_file = embedded // 5
    assert per_file > 1 and embedder.texts == embedded + 1
    assert changed.removed == per_file - 1 and store.count() == embedded - per_file + 1
    assert [d.text for d in store.query("Now short", k=1)] == ["Now short."]
    # other chunking settings cut the files differently: all of them are ingested again
    rechunked = ingest_folder(folder, store, chunk_size=80, chunk_overlap=0, progress=False)
    assert len(rechunked.updated) == 5


def test_prune_removes_files_gone_from_the_folder(tmp_path):
    folder = tmp_path / "docs"
    _write(folder / "keep.md", "Keep this file about granite.")
    _write(folder / "old" / "gone.md", "This file about basalt will be deleted.")
    store = _store(tmp_path)
    ingest_folder(folder, store, progress=False)
    (folder / "old" / "gone.md").unlink()
    kept = ingest_folder(folder, store, progress=False)
    assert kept.gone == ["old/gone.md"] and kept.pruned == []
    assert any("basalt" in t for t in _texts(store, "basalt"))  # not pruned unless asked
    pruned = ingest_folder(folder, store, progress=False, prune=True)
    assert pruned.pruned == ["old/gone.md"] and pruned.gone == []
    assert not any("basalt" in t for t in _texts(store, "basalt"))
    # another folder's files are never pruned by this one
    _write(tmp_path / "other" / "x.md", "Other folder text.")
    ingest_folder(tmp_path / "other", store, progress=False)
    (folder / "keep.md").unlink()
    emptied = ingest_folder(folder, store, progress=False, prune=True)
    assert emptied.pruned == ["keep.md"] and store.count() == 1
    assert _texts(store, "other") == ["Other folder text."]


def test_binary_files_are_refused_with_a_reason(tmp_path):
    folder = tmp_path / "docs"
    _write(folder / "good.md", "Readable text.")
    _write(folder / "zeros.txt", b"\x00" * 64)
    _write(folder / "utf16.md", "hi".encode("utf-16"))
    store = _store(tmp_path)
    with pytest.raises(InvalidFilesError) as info:
        ingest_folder(folder, store, progress=False)
    reasons = dict(info.value.problems)
    assert "NUL bytes" in reasons["zeros.txt"] and "binary" in reasons["zeros.txt"]
    assert "NUL bytes" in reasons["utf16.md"]
    assert store.count() == 0  # strict: nothing written
    report = ingest_folder(folder, store, progress=False, skip_invalid=True)
    assert report.added == ["good.md"] and [n for n, _ in report.refused] == ["utf16.md",
                                                                             "zeros.txt"]
    with pytest.raises(InputError, match="NUL bytes"):
        read_text_file(folder / "zeros.txt")
    # a file that turns binary keeps its earlier version, and says so
    _write(folder / "good.md", b"\x00\x01")
    _write(folder / "fine.md", "Another readable file.")
    later = ingest_folder(folder, store, progress=False, skip_invalid=True)
    assert "earlier version stays indexed" in dict(later.refused)["good.md"]
    assert later.gone == [] and "Readable text." in _texts(store, "readable")


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symbolic links here")
def test_symlinked_folders_are_reported_not_silently_skipped(tmp_path):
    target = tmp_path / "elsewhere"
    _write(target / "linked.md", "Linked text.")
    folder = tmp_path / "docs"
    _write(folder / "own.md", "Own text.")
    (folder / "link").symlink_to(target, target_is_directory=True)
    report = ingest_folder(folder, _store(tmp_path), progress=False)
    assert report.added == ["own.md"]
    assert [name for name, _ in report.not_followed] == ["link/"]
    assert "symbolic link" in report.not_followed[0][1]
    only_links = tmp_path / "only"
    only_links.mkdir()
    (only_links / "link").symlink_to(target, target_is_directory=True)
    with pytest.raises(InputError, match="symbolic links to folders were not followed"):
        load_folder(only_links)


def _crash_once(tmp_path: Path, folder: Path, fail_after: int) -> VectorStore:
    """Ingest until the embedder has embedded ``fail_after`` texts, then 'die'."""
    store = _store(tmp_path, CountingEmbedder(fail_after=fail_after), batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        ingest_folder(folder, store, chunk_size=30, chunk_overlap=0, progress=False)
    return store


def _corpus(folder: Path) -> dict[str, str]:
    files = {f"f{i}.md": " ".join(f"File{i} sentence {j}." for j in range(12))
             for i in range(4)}
    for name, text in files.items():
        _write(folder / name, text)
    return files


def test_a_crash_mid_file_is_never_served_and_finished_next_run(tmp_path):
    folder = tmp_path / "docs"
    files = _corpus(folder)
    crashed = _crash_once(tmp_path, folder, fail_after=6)
    manifest = crashed.reload_manifest()
    assert manifest.pending  # the file being written when it died
    assert crashed.count() > crashed.served_count()  # its chunks are there...
    reader = _store(tmp_path, read_only=True)
    pending = {k.rsplit("/", 1)[1] for k in manifest.pending}
    for doc in reader.query("sentence", k=50):  # ...but never served
        assert doc.metadata["source"] not in pending
        assert doc.metadata["source"] in {e.source for e in manifest.files.values()}
    report = ingest_folder(folder, _store(tmp_path), chunk_size=30, chunk_overlap=0,
                           progress=False)
    assert [name for name, _ in report.recovered] == sorted(pending)
    assert "ingested again" in report.recovered[0][1]
    store = _store(tmp_path)
    assert store.served_count() == store.count() and not store.reload_manifest().pending
    for name, text in files.items():  # every file whole, none lost
        got = [d for d in store.query(text, k=100) if d.metadata["source"] == name]
        assert len(got) == store.manifest.files[f"{folder.resolve().as_posix()}/{name}"].chunks


def test_a_crash_mid_update_then_the_file_deleted_removes_it(tmp_path):
    folder = tmp_path / "docs"
    _corpus(folder)
    store = _store(tmp_path)
    ingest_folder(folder, store, chunk_size=30, chunk_overlap=0, progress=False)
    _write(folder / "f1.md", " ".join(f"Changed sentence {j}." for j in range(12)))
    crashed = _crash_once(tmp_path, folder, fail_after=2)
    (key,) = crashed.reload_manifest().pending
    assert key.endswith("/f1.md")
    reader = _store(tmp_path, read_only=True)
    assert not [d for d in reader.query("sentence", k=100) if d.metadata["source"] == "f1.md"]
    (folder / "f1.md").unlink()
    report = ingest_folder(folder, _store(tmp_path), chunk_size=30, chunk_overlap=0,
                           progress=False)
    assert report.recovered == [("f1.md", "was left half-written by an interrupted ingest: "
                                          "its chunks were removed (the file is no longer in "
                                          "this folder)")]
    assert not _store(tmp_path).ids(where={"file_key": key})


def test_a_reader_opened_before_the_crash_stops_serving_the_file(tmp_path):
    folder = tmp_path / "docs"
    _corpus(folder)
    ingest_folder(folder, _store(tmp_path), chunk_size=30, chunk_overlap=0, progress=False)
    reader = _store(tmp_path, read_only=True)  # a long-lived reader, e.g. an app's store
    assert any(d.metadata["source"] == "f1.md" for d in reader.query("File1 sentence", k=5))
    _write(folder / "f1.md", " ".join(f"Changed sentence {j}." for j in range(12)))
    _crash_once(tmp_path, folder, fail_after=2)  # f1.md now half old, half new
    assert not [d for d in reader.query("File1 sentence", k=100)
                if d.metadata["source"] == "f1.md"]


def test_kill_9_mid_ingest_loses_nothing(tmp_path):
    """A real SIGKILL in the middle of a file: every file is whole or invisible, and the next
    run completes the folder."""
    folder = tmp_path / "docs"
    files = _corpus(folder)
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(TESTS)!r})
        from tiny_models import HashEmbedder
        from expertrag.ingest import ingest_folder
        from expertrag.retrieval import VectorStore

        class Dying(HashEmbedder):
            seen = 0
            def embed_documents(self, texts):
                Dying.seen += len(texts)
                if Dying.seen > 10:
                    os.kill(os.getpid(), signal.SIGKILL)
                return super().embed_documents(texts)

        store = VectorStore(path={str(tmp_path / "db")!r}, embedder=Dying(), batch_size=4)
        ingest_folder({str(folder)!r}, store, chunk_size=30, chunk_overlap=0, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120,
                          env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    manifest_path = tmp_path / "db" / "expertrag-manifest.expertrag.json"
    manifest = json.loads(manifest_path.read_text())  # whole JSON: written atomically
    assert manifest["pending"]
    reader = _store(tmp_path, read_only=True)
    committed = {e["source"] for e in manifest["files"].values()}
    assert {d.metadata["source"] for d in reader.query("sentence", k=100)} <= committed
    report = ingest_folder(folder, _store(tmp_path), chunk_size=30, chunk_overlap=0,
                           progress=False)
    assert report.recovered and report.files == len(files)
    store = _store(tmp_path)
    assert store.served_count() == store.count() == report.chunks
    assert {d.metadata["source"] for d in store.query("sentence", k=100)} == set(files)


def test_a_damaged_manifest_is_a_typed_error(tmp_path):
    _write(tmp_path / "docs" / "a.md", "Text.")
    store = _store(tmp_path)
    ingest_folder(tmp_path / "docs", store, progress=False)
    (tmp_path / "db" / "expertrag-manifest.expertrag.json").write_text("{not json")
    with pytest.raises(StoreError, match="manifest"):
        ingest_folder(tmp_path / "docs", _store(tmp_path), progress=False)
    with pytest.raises(StoreError, match="manifest"):
        _store(tmp_path, read_only=True).query("text")


def test_another_ingest_running_is_refused(tmp_path):
    import fcntl

    _write(tmp_path / "docs" / "a.md", "Text.")
    store = _store(tmp_path)
    lock = tmp_path / "db" / "expertrag-manifest.expertrag.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(StoreError, match="another ingest"):
            ingest_folder(tmp_path / "docs", store, progress=False)
    assert ingest_folder(tmp_path / "docs", store, progress=False).added == ["a.md"]


def test_another_embedding_model_is_refused_for_an_existing_collection(tmp_path):
    class Named(HashEmbedder):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.model_name = name

    _write(tmp_path / "docs" / "a.md", "Text.")
    ingest_folder(tmp_path / "docs", _store(tmp_path, Named("model-a")), progress=False)
    assert _store(tmp_path).manifest.embedding == "model-a"
    with pytest.raises(InputError, match="embedding-model model-a"):
        ingest_folder(tmp_path / "docs", _store(tmp_path, Named("model-b")), progress=False)


def test_chunks_of_an_earlier_version_without_roots_are_replaced(tmp_path):
    from expertrag.types import Document

    _write(tmp_path / "docs" / "a.md", "Current text.")
    store = _store(tmp_path)
    store.add([Document("Old text.", id="a.md#0", metadata={
        "source": "a.md", "chunk_index": 0, "start_index": 0, "path": "/x/a.md"}),
        Document("Added by hand.", id="mine", metadata={"source": "a.md"})])
    report = ingest_folder(tmp_path / "docs", store, progress=False)
    assert report.removed == 1
    assert sorted(d.text for d in store.query("text", k=5)) == ["Added by hand.",
                                                                "Current text."]
