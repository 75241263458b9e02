"""LangChain retriever / vector store over expertrag's Chroma layout (hashing embedder)."""

from __future__ import annotations

import hashlib
import math
import re

import pytest

pytest.importorskip("langchain_core")

from langchain_core.embeddings import Embeddings

from expertrag.langchain import ExpertChromaRetriever, ExpertEmbeddings, chroma_vectorstore
from expertrag.retrieval import VectorStore
from expertrag.types import Document


class HashEmbeddings(Embeddings):
    """Bag-of-words hashed into 64 dims, L2-normalised: shared words mean closeness."""

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * 64
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1.0
        norm = math.sqrt(sum(x * x for x in v)) or 1.0
        return [x / norm for x in v]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


DOCS = [
    Document("Cats purr when they are content.", id="cats", metadata={"src": "a.md"}),
    Document("Rust has a borrow checker.", id="rust", metadata={"src": "b.md"}),
    Document("Chroma stores vectors on disk.", id="chroma", metadata={"src": "c.md"}),
]


def test_retriever_over_core_store(tmp_path) -> None:
    store = VectorStore(str(tmp_path / "db"), "docs", embedder=HashEmbeddings())
    store.add(DOCS)
    retriever = ExpertChromaRetriever(store=store, k=2)
    docs = retriever.invoke("why do cats purr")
    assert len(docs) == 2 and docs[0].id == "cats"
    assert docs[0].page_content == DOCS[0].text
    assert docs[0].metadata["src"] == "a.md" and docs[0].metadata["score"] > 0


def test_chroma_vectorstore_reads_what_the_core_wrote(tmp_path) -> None:
    pytest.importorskip("langchain_chroma")
    path = str(tmp_path / "db")
    VectorStore(path, "docs", embedder=HashEmbeddings()).add(DOCS)
    vs = chroma_vectorstore(path=path, collection="docs", embedding=HashEmbeddings())
    hits = vs.similarity_search_with_relevance_scores("borrow checker in rust", k=1)
    assert hits[0][0].id == "rust" and hits[0][0].metadata["src"] == "b.md"
    assert 0 < hits[0][1] <= 1
    vs.add_texts(["Dogs bark."], ids=["dogs"])
    assert vs.as_retriever(search_kwargs={"k": 1}).invoke("dogs bark")[0].id == "dogs"


def test_embeddings_are_shared_and_lazy() -> None:
    # an option no other test uses, so the shared instance is new (other tests may have
    # loaded the default one in this process)
    a, b = ExpertEmbeddings(batch_size=7), ExpertEmbeddings(batch_size=7)
    assert a.embedder is b.embedder
    assert a.embedder is not ExpertEmbeddings().embedder
    assert a.embedder._model is None  # nothing loaded yet
