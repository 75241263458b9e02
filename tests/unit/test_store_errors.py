"""A store opened read-only creates nothing and refuses writes; a path that is a file and a
damaged Chroma database are typed errors that say what to do."""

from __future__ import annotations

import os
import shutil

import pytest
from tiny_models import HashEmbedder, store_docs

from expertrag.errors import ExpertRAGError, InputError, MissingStoreError, StoreError
from expertrag.retrieval import VectorStore, open_store
from expertrag.types import Document


def _filled(path, n: int = 1, collection: str = "expertrag") -> VectorStore:
    store = VectorStore(path=path, collection=collection, embedder=HashEmbedder())
    docs = store_docs() if n <= 3 else [Document(f"Document number {i} about topic {i % 7}.",
                                                 id=f"d{i}") for i in range(n)]
    store.add(docs)
    return store


def test_read_only_creates_no_database(tmp_path):
    missing = tmp_path / "nodb"
    with pytest.raises(MissingStoreError, match="no database at"):
        VectorStore(path=missing, embedder=HashEmbedder(), read_only=True)
    assert not missing.exists()
    empty = tmp_path / "emptydir"
    empty.mkdir()
    with pytest.raises(MissingStoreError, match="ingest documents first"):
        VectorStore(path=empty, embedder=HashEmbedder(), read_only=True)
    assert list(empty.iterdir()) == []


def test_read_only_refuses_a_missing_collection_and_creates_none(tmp_path):
    kept = _filled(tmp_path / "db", collection="handbook")
    with pytest.raises(MissingStoreError, match=r"no collection 'hanbook'.*'handbook'"):
        VectorStore(path=tmp_path / "db", collection="hanbook", embedder=HashEmbedder(),
                    read_only=True)
    assert [c.name for c in kept.client.list_collections()] == ["handbook"]


def test_read_only_refuses_writes(tmp_path):
    _filled(tmp_path / "db")
    store = VectorStore(path=tmp_path / "db", embedder=HashEmbedder(), read_only=True)
    assert store.count() == 3 and store.query("lighthouse", k=1)[0].id == "a"
    for write in (lambda: store.add(store_docs()), lambda: store.delete(["a"]), store.reset):
        with pytest.raises(StoreError, match="read-only"):
            write()
    assert store.count() == 3


def test_a_path_that_is_a_file_is_a_typed_error(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a database")
    for read_only in (False, True):
        with pytest.raises(StoreError, match="is a file, not a folder"):
            VectorStore(path=afile, embedder=HashEmbedder(), read_only=read_only)
    assert afile.read_text() == "not a database"


def test_a_file_that_is_not_a_database(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "chroma.sqlite3").write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError, match="may be damaged"):
        VectorStore(path=folder, embedder=HashEmbedder(), read_only=True)


def test_a_database_damaged_in_the_middle(tmp_path):
    _filled(tmp_path / "good", n=600)
    shutil.copytree(tmp_path / "good", tmp_path / "broken")  # a fresh path: a fresh client
    sqlite = tmp_path / "broken" / "chroma.sqlite3"
    size = sqlite.stat().st_size
    with open(sqlite, "r+b") as handle:
        handle.seek(size // 2)
        handle.write(b"\x00\xff" * 8192)
    with pytest.raises(StoreError) as info:
        store = VectorStore(path=tmp_path / "broken", embedder=HashEmbedder(), read_only=True)
        store.count()
        store.query("topic 3", k=4)
        store.get([f"d{i}" for i in range(600)])
    assert "damaged" in str(info.value) and "new --db" in str(info.value)


def test_vectors_of_another_size_name_the_embedding_model(tmp_path):
    class Small(HashEmbedder):
        dim = 8

    _filled(tmp_path / "db")
    store = VectorStore(path=tmp_path / "db", embedder=Small(), read_only=True)
    with pytest.raises(StoreError, match="another size"):
        store.query("lighthouse")


def test_open_store_uses_the_recorded_embedding_model(tmp_path):
    from expertrag.embeddings import Embedder
    from expertrag.ingest import ingest_folder

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("Text.")

    class Named(HashEmbedder):
        model_name = "some/local-model"

    ingest_folder(tmp_path / "docs", VectorStore(path=tmp_path / "db", embedder=Named()),
                  progress=False)
    store = open_store(tmp_path / "db", read_only=True)
    assert isinstance(store.embedder, Embedder) and store.embedder.model_name == \
        "some/local-model"  # lazy: nothing loaded
    chosen = open_store(tmp_path / "db", read_only=True, embedding_model="other")
    assert chosen.embedder.model_name == "other"
    with pytest.raises(InputError):
        open_store(tmp_path / "db", embedding_model="  ")


@pytest.mark.parametrize("call", [
    lambda s: s.add("text"),
    lambda s: s.add([object()]),
    lambda s: s.query("x", k=0),
    lambda s: s.query("x", where="source"),
    lambda s: s.delete(5),
    lambda s: s.get([1]),
])
def test_bad_arguments_are_typed(tmp_path, call):
    store = _filled(tmp_path / "db")
    with pytest.raises(ExpertRAGError):
        call(store)


def test_batch_size_is_checked(tmp_path):
    with pytest.raises(InputError, match="batch_size"):
        VectorStore(path=tmp_path / "db", embedder=HashEmbedder(), batch_size=0)
    assert not os.path.exists(tmp_path / "db")


def test_a_database_copied_without_its_index_is_an_error_not_an_empty_answer(tmp_path):
    pruned = _filled(tmp_path / "db", n=3000)
    pruned.delete([f"d{i}" for i in range(2900)])  # Chroma compacts its log into the index
    # deletions alone never trip the check: a heavily pruned index still fills k
    assert all(len(pruned.query(f"topic {t}", k=20)) == 20 for t in range(7))
    shutil.copytree(tmp_path / "db", tmp_path / "copy",
                    ignore=lambda folder, names: [n for n in names
                                                  if (tmp_path / "db" / n).is_dir()])
    store = VectorStore(path=tmp_path / "copy", embedder=HashEmbedder(), read_only=True)
    assert store.count() == 100
    with pytest.raises(StoreError, match="index files are missing or damaged"):
        store.query("topic 3", k=10)
