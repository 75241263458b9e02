"""VectorStore over an embedded Chroma, with a deterministic hashing embedder."""

from __future__ import annotations

import pytest
from tiny_models import HashEmbedder, store_docs

from expertrag.embeddings import Embedder
from expertrag.errors import EmptyCollectionError, InputError
from expertrag.retrieval import VectorStore, content_id
from expertrag.types import Document

DOCS = store_docs()


@pytest.fixture
def store(tmp_path):
    return VectorStore(path=tmp_path / "db", collection="test", embedder=HashEmbedder())


def test_add_query_scores_and_metadata(store):
    assert store.add(DOCS) == ["a", "b", "c"]
    assert store.count() == 3
    hits = store.query("when was the lighthouse built", k=2)
    assert hits[0].id == "a"
    assert hits[0].metadata == {"src": "x"}
    assert 0.0 < hits[0].score <= 1.0 + 1e-6
    assert hits[0].score >= hits[1].score
    # k larger than the collection is clamped, not an error
    assert len(store.query("lighthouse", k=10)) == 3


def test_where_filter(store):
    store.add(DOCS)
    hits = store.query("lighthouse", k=3, where={"src": "y"})
    assert [h.id for h in hits] == ["b"]


def test_persistence_across_instances(tmp_path):
    first = VectorStore(path=tmp_path / "db", collection="test", embedder=HashEmbedder())
    first.add(DOCS)
    reopened = VectorStore(path=tmp_path / "db", collection="test", embedder=HashEmbedder())
    assert reopened.count() == 3
    assert reopened.get(["c"])[0].text.startswith("Lantern Night")
    other = VectorStore(path=tmp_path / "db", collection="other", embedder=HashEmbedder())
    assert other.count() == 0


def test_upsert_is_idempotent_and_ids_are_stable(store):
    no_ids = [Document("alpha beta"), Document("gamma delta", metadata={"k": 1})]
    ids1 = store.add(no_ids)
    ids2 = store.add(no_ids)
    assert ids1 == ids2 == [content_id("alpha beta"), content_id("gamma delta", {"k": 1})]
    assert store.count() == 2
    # an updated text under the same id replaces the old one
    store.add([Document("new text", id=ids1[0])])
    assert store.count() == 2
    assert store.get([ids1[0]])[0].text == "new text"


def test_duplicate_ids_in_one_call_keep_last(store):
    store.add([Document("one", id="x"), Document("two", id="x")])
    assert store.count() == 1
    assert store.get(["x"])[0].text == "two"


def test_batches(tmp_path):
    emb = HashEmbedder()
    s = VectorStore(path=tmp_path / "db", embedder=emb, batch_size=2)
    s.add([Document(f"doc number {i}", id=str(i)) for i in range(5)])
    assert s.count() == 5
    assert emb.calls == 3


def test_empty_collection_error_says_ingest(store):
    with pytest.raises(EmptyCollectionError, match="ingest"):
        store.query("anything")


def test_get_delete_reset_ids(store):
    store.add(DOCS)
    assert [d.id for d in store.get(["c", "missing", "a"])] == ["c", "a"]
    assert sorted(store.ids()) == ["a", "b", "c"]
    assert store.ids(where={"src": "x"}) == ["a"]
    store.delete(["a"])
    assert store.count() == 2
    store.reset()
    assert store.count() == 0
    store.add(DOCS[:1])  # usable after reset
    assert store.count() == 1


def test_non_scalar_metadata_is_stringified(store):
    store.add([Document("t", id="m", metadata={"tags": ["a", "b"], "none": None, "n": 2})])
    meta = store.get(["m"])[0].metadata
    assert meta == {"tags": '["a", "b"]', "n": 2}


def test_bad_inputs(store):
    with pytest.raises(InputError, match=r"documents\[1\]"):
        store.add([Document("ok"), "not a document"])  # type: ignore[list-item]
    with pytest.raises(InputError):
        store.add(Document("single"))  # type: ignore[arg-type]
    store.add(DOCS)
    with pytest.raises(InputError):
        store.query("")
    with pytest.raises(InputError):
        store.query("x", k=0)
    with pytest.raises(InputError):
        VectorStore(path=".", embedder=object())  # type: ignore[arg-type]


def test_bad_collection_name_is_input_error(tmp_path):
    with pytest.raises(InputError, match="'x'"):
        VectorStore(path=tmp_path / "db", collection="x", embedder=HashEmbedder())


# -- Embedder behaviour that needs no model -------------------------------------------------
def test_embedder_construction_is_lazy():
    emb = Embedder()
    assert emb._model is None
    assert emb.model_name == "all-minilm-l6-v2"
    assert emb.embed_documents([]) == []
    assert emb._model is None


def test_embedder_rejects_bad_items_naming_the_index():
    emb = Embedder()
    with pytest.raises(InputError, match=r"texts\[2\]"):
        emb.embed_documents(["a", "b", 3])  # type: ignore[list-item]
    with pytest.raises(InputError):
        emb.embed_documents("not a list")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        emb.embed_query(None)  # type: ignore[arg-type]
    with pytest.raises(InputError):
        Embedder(batch_size=0)
    with pytest.raises(InputError, match="precision"):
        Embedder(precision="half")
    assert emb._model is None


def test_embedder_variant_is_lazy_until_loaded():
    emb = Embedder()
    half = emb.variant(precision="bfloat16", attention="eager", batch_size=64)
    assert (half.precision, half.attention, half.batch_size, half.model_name, half._model) == (
        "bfloat16", "eager", 64, emb.model_name, None)
    assert emb.variant(precision="float32") is emb and emb.variant() is emb
    assert "bfloat16" in repr(half)


def test_default_store_uses_lazy_embedder(tmp_path):
    s = VectorStore(path=tmp_path / "db")
    assert isinstance(s.embedder, Embedder)
    assert s.embedder._model is None
    assert s.count() == 0
