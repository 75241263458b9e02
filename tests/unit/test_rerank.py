"""Core rerankers: protocol semantics (ordering, top_n, threshold, ties, async, errors), the
cross-encoder over tiny random BERTs, the LLM pointwise reranker over a tiny Llama, fusion,
MMR, the lost-in-the-middle reorder, BM25 and the hybrid first stage."""

from __future__ import annotations

import asyncio
import itertools
import math
import threading

import pytest
from tiny_models import save_tiny_lora
from tiny_models import tiny_llm as build_tiny_llm
from tiny_rerankers import FixedReranker, WordEmbedder, docs, tiny_cross_encoder

from expertrag.errors import InputError
from expertrag.rerank import (
    CrossEncoderReranker,
    EmbeddingReranker,
    LLMReranker,
    lost_in_the_middle_reorder,
    mmr,
    mmr_indices,
    reciprocal_rank_fusion,
)
from expertrag.retrieval.bm25 import BM25Retriever
from expertrag.retrieval.hybrid import HybridRetriever
from expertrag.types import Document


# ------------------------------------------------------------------ protocol
def test_rerank_orders_and_scores() -> None:
    rr = FixedReranker({"a": 0.1, "b": 0.9, "c": 0.5})
    out = rr.rerank("q", docs("a", "b", "c"))
    assert [d.text for d in out] == ["b", "c", "a"]
    assert [d.score for d in out] == [0.9, 0.5, 0.1]
    assert all(d.metadata["rerank_score"] == d.score for d in out)


def test_rerank_returns_copies_and_keeps_retrieval_score() -> None:
    original = [Document("a", id="x", metadata={"src": 1}, score=3.0)]
    out = FixedReranker({"a": 0.2}).rerank("q", original)
    assert out[0].metadata == {"src": 1, "retrieval_score": 3.0, "rerank_score": 0.2}
    assert original[0].metadata == {"src": 1} and original[0].score == 3.0


def test_top_n_and_threshold() -> None:
    rr = FixedReranker({"a": 0.1, "b": 0.9, "c": 0.5, "d": 0.7})
    assert [d.text for d in rr.rerank("q", docs("a", "b", "c", "d"), top_n=2)] == ["b", "d"]
    assert [d.text for d in rr.rerank("q", docs("a", "b", "c", "d"), threshold=0.5)] == [
        "b", "d", "c"]
    assert [d.text for d in rr.rerank("q", docs("a", "b", "c", "d"), top_n=1,
                                      threshold=0.95)] == []
    with pytest.raises(InputError):
        rr.rerank("q", docs("a"), top_n=0)


def test_ties_keep_input_order_and_nan_sorts_last() -> None:
    rr = FixedReranker({"a": 0.5, "b": 0.5, "c": 0.9, "d": 0.5, "e": math.nan})
    out = rr.rerank("q", docs("e", "a", "b", "c", "d"))
    assert [d.text for d in out] == ["c", "a", "b", "d", "e"]


def test_empty_input_and_bad_documents() -> None:
    rr = FixedReranker({})
    assert rr.rerank("q", []) == []
    with pytest.raises(InputError, match=r"documents\[1\] \(id 'd1'\)"):
        rr.rerank("q", [Document("ok", id="d0"), Document("  ", id="d1")])
    with pytest.raises(InputError, match=r"documents\[0\]"):
        rr.rerank("q", [Document(None)])  # type: ignore[arg-type]
    with pytest.raises(InputError, match="must be a Document"):
        rr.rerank("q", ["plain string"])  # type: ignore[list-item]
    with pytest.raises(InputError, match="query"):
        rr.rerank(None, docs("a"))  # type: ignore[arg-type]


async def test_arerank_runs_off_the_loop() -> None:
    rr = FixedReranker({"a": 0.1, "b": 0.9})
    out = await rr.arerank("q", docs("a", "b"), top_n=1)
    assert [d.text for d in out] == ["b"]
    assert rr.threads and rr.threads[-1] != threading.current_thread().name
    assert await rr.arerank("q", []) == []


# ------------------------------------------------------------------ cross-encoder
@pytest.fixture(scope="module")
def tiny_ce_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return tiny_cross_encoder(tmp_path_factory.mktemp("ce1"), num_labels=1, seed=0)


PASSAGES = [
    "the cat sat on the mat",
    "paris is the capital of france " * 20,
    "dog",
    "bread and water " * 60,  # longer than the 128-token limit: truncated
    "what is the quick brown fox",
    "river",
]


def test_cross_encoder_length_sorting_gives_identical_scores(tiny_ce_dir: str) -> None:
    sorted_rr = CrossEncoderReranker(tiny_ce_dir, batch_size=2)
    plain = CrossEncoderReranker(tiny_ce_dir, batch_size=2, sort_by_length=False)
    single = CrossEncoderReranker(tiny_ce_dir, batch_size=1)
    query = "what is the capital of france"
    a, b, c = (r.score(query, PASSAGES) for r in (sorted_rr, plain, single))
    assert a == pytest.approx(b, abs=1e-5) and a == pytest.approx(c, abs=1e-5)
    assert sorted_rr.max_length == 128


def test_cross_encoder_plans_padding_aware_batches(tiny_ce_dir: str, monkeypatch) -> None:
    """One batch_size=32 call over mixed lengths: the two long passages are scored apart from
    the short ones (no padding them to 128), and the scores equal one-at-a-time scoring."""
    import expertrag.rerank.cross_encoder as ce_module

    widths: list[tuple[int, int]] = []
    real_pad = ce_module._pad_batch

    def spy(features, rows, pad, device):
        batch = real_pad(features, rows, pad, device)
        widths.append(tuple(batch["input_ids"].shape))
        return batch

    monkeypatch.setattr(ce_module, "_pad_batch", spy)
    planned = CrossEncoderReranker(tiny_ce_dir, batch_size=32)
    query = "what is the capital of france"
    got = planned.score(query, PASSAGES)
    assert widths[0] == (2, 128)  # the two passages cut to the 128-token limit
    assert all(width < 20 for _, width in widths[1:])
    assert sum(rows for rows, _ in widths) == len(PASSAGES)
    alone = CrossEncoderReranker(tiny_ce_dir, batch_size=1).score(query, PASSAGES)
    assert got == pytest.approx(alone, abs=1e-5)
    capped = CrossEncoderReranker(tiny_ce_dir, max_batch_tokens=40, batch_overhead=10**6)
    widths.clear()
    assert capped.score(query, PASSAGES) == pytest.approx(alone, abs=1e-5)
    assert all(rows == 1 or rows * width <= 40 for rows, width in widths)
    for bad in ({"max_batch_tokens": 0}, {"batch_overhead": -1}):
        with pytest.raises(InputError):
            CrossEncoderReranker(tiny_ce_dir, **bad)


def test_cross_encoder_matches_sentence_transformers(tiny_ce_dir: str) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(tiny_ce_dir, activation_fn=torch.nn.Identity(), device="cpu")
    pairs = [("what is the capital of france", p) for p in PASSAGES]
    expected = ce.predict(pairs, batch_size=4).tolist()
    ours = CrossEncoderReranker(tiny_ce_dir).score(pairs[0][0], PASSAGES)
    assert ours == pytest.approx(expected, abs=1e-5)
    wrapped = CrossEncoderReranker(ce).score(pairs[0][0], PASSAGES)  # an ST instance
    assert wrapped == pytest.approx(expected, abs=1e-5)
    sig = CrossEncoderReranker(tiny_ce_dir, activation="sigmoid").score(pairs[0][0], PASSAGES)
    assert sig == pytest.approx([1 / (1 + math.exp(-x)) for x in expected], abs=1e-5)


def test_cross_encoder_two_labels_softmax(tmp_path) -> None:
    folder = tiny_cross_encoder(tmp_path / "ce2", num_labels=2, seed=1)
    scores = CrossEncoderReranker(folder).score("cat", ["the cat", "dog", "bread"])
    assert all(0.0 < s < 1.0 for s in scores)


def test_cross_encoder_rerank_and_async(tiny_ce_dir: str) -> None:
    rr = CrossEncoderReranker(tiny_ce_dir, batch_size=3)
    ds = docs(*PASSAGES)
    out = rr.rerank("capital of france", ds, top_n=4)
    scores = rr.score("capital of france", PASSAGES)
    expected = sorted(range(len(ds)), key=lambda i: -scores[i])[:4]
    assert [d.id for d in out] == [f"d{i}" for i in expected]
    assert rr.rerank("q", []) == []
    out_async = asyncio.run(rr.arerank("capital of france", ds, top_n=4))
    assert [d.id for d in out_async] == [d.id for d in out]
    assert [d.score for d in out_async] == pytest.approx([d.score for d in out], abs=1e-6)


def test_cross_encoder_long_query_and_bad_args(tiny_ce_dir: str, tmp_path) -> None:
    rr = CrossEncoderReranker(tiny_ce_dir)
    assert len(rr.score("paris " * 300, ["cat", "dog"])) == 2  # query alone over the limit
    with pytest.raises(InputError):
        CrossEncoderReranker(tiny_ce_dir, batch_size=0)
    with pytest.raises(InputError):
        CrossEncoderReranker(tiny_ce_dir, activation="tanh")
    from expertrag.errors import ModelNotFoundError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="safetensors"):
        CrossEncoderReranker(str(tmp_path / "empty")).score("q", ["a"])


# ------------------------------------------------------------------ LLM pointwise
def test_llm_reranker_probabilities_and_order(tiny_llm) -> None:
    rr = LLMReranker(tiny_llm, batch_size=2)
    texts = ["the quick brown fox", "hello", "retrieval answers questions " * 5, "json"]
    scores = rr.score("what is rag?", texts)
    assert len(scores) == 4 and all(0.0 <= s <= 1.0 for s in scores)
    # batching and length sorting do not change the scores
    one_by_one = [rr.score("what is rag?", [t])[0] for t in texts]
    assert scores == pytest.approx(one_by_one, abs=1e-4)
    out = rr.rerank("what is rag?", docs(*texts), top_n=2)
    assert [d.score for d in out] == sorted(scores, reverse=True)[:2]


def test_llm_reranker_prompt_truncation_and_labels(tiny_llm) -> None:
    rr = LLMReranker(tiny_llm, max_passage_tokens=8)
    msgs = rr.messages("q?", "word " * 500)
    assert msgs[-1]["content"].count("word") < 20
    labels, positive = rr._labels()
    assert labels[0] == "yes" and "yes" in positive and "no" not in positive
    with pytest.raises(InputError):
        LLMReranker(tiny_llm, prompt="no placeholders")


def test_llm_reranker_with_expert(tmp_path) -> None:
    llm = build_tiny_llm(seed=2)
    llm.add_expert("relevance", save_tiny_lora(llm, str(tmp_path / "rel"), seed=4))
    texts = ["the quick brown fox", "hello world"]
    base = LLMReranker(llm).score("q?", texts)
    expert = LLMReranker(llm, expert="relevance").score("q?", texts)
    assert expert != pytest.approx(base, abs=1e-6)
    out = asyncio.run(LLMReranker(llm, expert="relevance").arerank("q?", docs(*texts)))
    assert sorted(d.score for d in out) == pytest.approx(sorted(expert), abs=1e-6)


def test_llm_reranker_with_relevance_expert_uses_its_training_prompt(tmp_path) -> None:
    from expertrag.errors import ExpertError
    from expertrag.training.data import RELEVANCE_LABELS, relevance_messages

    llm = build_tiny_llm(seed=3)
    with pytest.raises(ExpertError):  # the shipped expert fits SmolLM2, not this tiny base
        LLMReranker.with_relevance_expert(llm)
    llm.add_expert("relevance", save_tiny_lora(llm, str(tmp_path / "rel"), seed=5))
    rr = LLMReranker.with_relevance_expert(llm, batch_size=2, pool_case=False)
    assert rr.expert == "relevance" and rr.system is None
    assert rr.messages(" Who won? ", " The home team. ") == relevance_messages("Who won?",
                                                                            "The home team.")
    texts = ["the quick brown fox", "hello " * 30, "json"]
    got = rr.score("who?", texts)
    # the same numbers as scoring the training prompt directly
    probs = llm.label_probabilities([relevance_messages("who?", t) for t in texts],
                                    labels=RELEVANCE_LABELS, expert="relevance")
    assert got == pytest.approx([p["yes"] for p in probs], abs=1e-5)


# ------------------------------------------------------------------ embedding reranker
def test_embedding_reranker_cosine() -> None:
    rr = EmbeddingReranker(WordEmbedder())
    out = rr.rerank("capital of france?", docs("bread river", "paris france capital", "cat"))
    assert out[0].text == "paris france capital"
    assert out[0].score == pytest.approx(
        (1 + 1 + 0.01) / (math.sqrt(2 + 0.01) * math.sqrt(3 + 0.01)))


# ------------------------------------------------------------------ fusion, MMR, reorder
def test_rrf_hand_computed() -> None:
    a = [Document("x", id="1"), Document("y", id="2"), Document("z", id="3")]
    b = [Document("y'", id="2"), Document("w", id="4")]
    out = reciprocal_rank_fusion([a, b], k=60)
    expected = {"1": 1 / 61, "2": 1 / 62 + 1 / 61, "3": 1 / 63, "4": 1 / 62}
    assert [d.id for d in out] == ["2", "1", "4", "3"]
    assert {d.id: d.score for d in out} == pytest.approx(expected)
    assert out[0].text == "y" and out[0].metadata["rrf_score"] == out[0].score  # first seen
    weighted = reciprocal_rank_fusion([a, b], k=0, weights=[1.0, 3.0])
    assert {d.id: d.score for d in weighted} == pytest.approx(
        {"1": 1.0, "2": 0.5 + 3.0, "3": 1 / 3, "4": 1.5})


def test_rrf_dedupes_by_text_without_ids_and_ties_are_stable() -> None:
    a = [Document("p"), Document("q")]
    b = [Document("q"), Document("p")]
    out = reciprocal_rank_fusion([a, b])
    assert [d.text for d in out] == ["p", "q"]  # equal scores: first-seen order
    assert reciprocal_rank_fusion([]) == [] and reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(InputError):
        reciprocal_rank_fusion([a], weights=[1.0, 2.0])


def test_mmr_hand_computed() -> None:
    q = [1.0, 0.0]
    embs = [[1.0, 0.0], [0.99, 0.141], [0.0, 1.0], [0.7071, 0.7071]]
    # lambda=1: pure relevance order
    assert mmr_indices(q, embs, 4, lambda_mult=1.0) == [0, 1, 3, 2]
    # lambda=0.5: after doc 0, doc1 = .5*.99 - .5*.99 = 0; doc3 = .5*.707 - .5*.707 = 0;
    # doc2 = 0 - 0 = 0 -> tie, earliest (doc 1) wins; then doc2: .5*0-.5*max(0,.141)=-.07,
    # doc3: .5*.707-.5*max(.707,.80)=-.05 -> doc 3
    assert mmr_indices(q, embs, 3, lambda_mult=0.5)[:1] == [0]
    assert mmr_indices(q, embs, 2, lambda_mult=0.0) == [0, 2]  # pure diversity
    out = mmr(q, embs, docs("a", "b", "c", "d"), k=2, lambda_mult=0.0)
    assert [d.text for d in out] == ["a", "c"]
    assert out[1].metadata["mmr_query_similarity"] == pytest.approx(0.0)
    assert mmr(q, [], [], k=3) == []


def test_lost_in_the_middle_matches_langchain() -> None:
    assert lost_in_the_middle_reorder([1, 2, 3, 4, 5]) == [1, 3, 5, 4, 2]
    assert lost_in_the_middle_reorder([1, 2, 3, 4]) == [2, 4, 3, 1]  # even: best last
    assert lost_in_the_middle_reorder([]) == []
    lc = pytest.importorskip("langchain_community.document_transformers.long_context_reorder")
    from langchain_core.documents import Document as LCDoc

    for n in range(1, 9):
        items = list(range(n))
        theirs = lc.LongContextReorder().transform_documents(
            [LCDoc(page_content=str(i)) for i in items])
        assert [int(d.page_content) for d in theirs] == lost_in_the_middle_reorder(items)


# ------------------------------------------------------------------ BM25 and hybrid
CORPUS = [
    Document("Paris is the capital and largest city of France.", id="paris"),
    Document("The cat sat on the mat all afternoon.", id="cat"),
    Document("Dogs are loyal animals that love running.", id="dog"),
    Document("Bread is made from flour, water and yeast.", id="bread"),
    Document("The Seine river flows through Paris.", id="seine"),
]


def test_bm25_sanity() -> None:
    bm = BM25Retriever(CORPUS, stemmer="english")
    out = bm.retrieve("capital of France", k=3)
    assert out[0].id == "paris" and out[0].score > 0
    assert bm.retrieve("running dog", 5)[0].id == "dog"  # stemming: dogs/running
    assert bm.retrieve("zzzz unknown", 3) == []
    assert {d.id for d in bm.retrieve("paris", 10)} == {"paris", "seine"}
    assert all(a.score >= b.score for a, b in itertools.pairwise(out))
    with pytest.raises(InputError):
        bm.retrieve("x", 0)
    assert BM25Retriever([]).retrieve("paris", 3) == []


def test_hybrid_fuses_bm25_and_dense() -> None:
    hy = HybridRetriever(CORPUS, embedder=WordEmbedder(), k=3)
    out = hy.retrieve("Paris capital")
    assert out[0].id == "paris" and len(out) == 3
    assert out[0].metadata["bm25_rank"] == 1 and out[0].metadata["dense_rank"] == 1
    sparse = hy.bm25.retrieve("Paris capital", 100)
    dense = hy.dense_retrieve("Paris capital", 100)
    expected = reciprocal_rank_fusion([sparse, dense], k=60)[:3]
    assert [d.id for d in out] == [d.id for d in expected]
    assert [d.id for d in asyncio.run(hy.aretrieve("Paris capital", k=2))] == [
        d.id for d in out[:2]]
    ids = HybridRetriever(["a text", "another"], embedder=WordEmbedder()).documents
    assert all(d.id for d in ids)


def test_hybrid_takes_precomputed_vectors_and_embeds_no_document() -> None:
    emb = WordEmbedder()
    vectors = emb.embed_documents([d.text for d in CORPUS])

    class QueriesOnly(WordEmbedder):
        def embed_documents(self, texts):
            raise AssertionError("documents were embedded again")

    hy = HybridRetriever(CORPUS, embedder=QueriesOnly(), vectors=vectors, k=3)
    ref = HybridRetriever(CORPUS, embedder=emb, k=3)
    assert [d.id for d in hy.retrieve("Paris capital")] == [
        d.id for d in ref.retrieve("Paris capital")]
    with pytest.raises(InputError, match="one row per document"):
        HybridRetriever(CORPUS, embedder=emb, vectors=vectors[:1])
    with pytest.raises(InputError, match="a store keeps its own"):
        HybridRetriever(store=object(), vectors=vectors)


def test_hybrid_over_vector_store(tmp_path) -> None:
    from expertrag.retrieval import VectorStore

    store = VectorStore(tmp_path / "db", "hyb", embedder=WordEmbedder())
    store.add(CORPUS)
    hy = HybridRetriever(store=store, k=2)
    assert len(hy) == len(CORPUS)
    assert hy.retrieve("cat on the mat")[0].id == "cat"
