"""BM25 keyword retrieval over an in-memory corpus, with the maintained ``bm25s`` library."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from expertrag.errors import InputError
from expertrag.types import Document

BM25_SCORE = "bm25_score"


def _stemmer(stemmer: str | Callable[[str], str] | None) -> Any:
    if stemmer is None or callable(stemmer):
        return stemmer
    if stemmer == "auto":  # English stemming when PyStemmer is installed, else none
        try:
            import Stemmer
        except ImportError:
            return None
        return Stemmer.Stemmer("english").stemWord
    try:
        import Stemmer
    except ImportError as exc:
        raise ImportError(
            f"stemmer={stemmer!r} needs PyStemmer: pip install PyStemmer "
            "(or pass a callable word -> stem)"
        ) from exc
    return Stemmer.Stemmer(stemmer).stemWord


class BM25Retriever:
    """Okapi BM25 (Lucene variant) over `documents`; ``retrieve`` returns scored copies.

    ``stemmer`` is None (no stemming), a PyStemmer language such as ``"english"``, ``"auto"``
    (English if PyStemmer is installed), or a callable. English stopwords are removed.
    Documents sharing no term with the query are not returned (their score is 0), so fewer
    than ``k`` results can come back.
    """

    def __init__(
        self,
        documents: Sequence[Document],
        k1: float = 1.5,
        b: float = 0.75,
        stemmer: str | Callable[[str], str] | None = None,
        stopwords: str | list[str] | None = "english",
    ) -> None:
        import bm25s
        from bm25s.tokenization import Tokenizer

        docs = list(documents)
        for i, doc in enumerate(docs):
            if not isinstance(doc, Document) or not isinstance(doc.text, str):
                raise InputError(f"documents[{i}] must be a Document with text")
        self.documents = docs
        self.k1, self.b = k1, b
        self._tokenizer = Tokenizer(stopwords=stopwords or [], stemmer=_stemmer(stemmer))
        self._index = bm25s.BM25(k1=k1, b=b)
        if docs:
            tokens = self._tokenizer.tokenize([d.text for d in docs], update_vocab=True,
                                              return_as="ids", show_progress=False)
            self._index.index(tokens, show_progress=False)

    def __len__(self) -> int:
        return len(self.documents)

    def retrieve(self, query: str, k: int = 10) -> list[Document]:
        """The top-`k` documents for `query`, best first, BM25 score in ``score`` and
        ``metadata["bm25_score"]`` (equal scores keep corpus order)."""
        import numpy as np

        if not isinstance(query, str):
            raise InputError(f"query must be a string, got {type(query).__name__}")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if not self.documents:
            return []
        ids = self._tokenizer.tokenize([query], update_vocab=False, return_as="ids",
                                       show_progress=False)[0]
        if not ids:
            return []
        scores = self._index.get_scores(ids)
        hits = np.flatnonzero(scores > 0)
        top = hits[np.lexsort((hits, -scores[hits]))][:k]  # by score desc, then corpus order
        out = []
        for i in top.tolist():
            doc, s = self.documents[i], float(scores[i])
            out.append(replace(doc, score=s, metadata={**(doc.metadata or {}), BM25_SCORE: s}))
        return out
