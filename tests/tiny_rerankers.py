"""Tiny random cross-encoders built offline (BERT, 2 layers, hidden 32) for fast tests.

The tokenizer is a WordPiece ``BertTokenizerFast`` over a small vocabulary of special tokens,
a few words and every ASCII letter/digit (also as ``##`` continuations), so any text encodes.
"""

from __future__ import annotations

import string
import threading
from pathlib import Path
from typing import Any, ClassVar

from expertrag.rerank import Reranker
from expertrag.types import Document

WORDS = ("the cat dog sat on mat fox quick brown lazy what is a of and to in paris capital "
         "france city river bread water").split()


def tiny_bert_tokenizer(folder: str | Path) -> Any:
    """Write a vocab.txt into `folder` and return a fast BERT tokenizer over it."""
    from transformers import BertTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *chars,
             *("##" + c for c in chars)]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), model_max_length=128)


def tiny_cross_encoder(folder: str | Path, num_labels: int = 1, seed: int = 0) -> str:
    """Save a random 2-layer BERT sequence classifier + tokenizer to `folder` (safetensors)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    tokenizer = tiny_bert_tokenizer(folder)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128, num_labels=num_labels)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return str(folder)


class FixedReranker(Reranker):
    """Scores from a table keyed by text (unknown texts score 0)."""

    def __init__(self, table: dict[str, float]) -> None:
        self.table = table
        self.threads: list[str] = []

    def score(self, query: str, texts: list[str]) -> list[float]:
        self.threads.append(threading.current_thread().name)
        return [self.table.get(t, 0.0) for t in texts]


def docs(*texts: str) -> list[Document]:
    return [Document(text=t, id=f"d{i}") for i, t in enumerate(texts)]


class WordEmbedder:
    """Bag-of-words vectors over a fixed vocabulary: deterministic, no model."""

    VOCAB: ClassVar[list[str]] = [
        "cat", "dog", "paris", "france", "bread", "river", "capital", "mat"]

    def _vec(self, text: str) -> list[float]:
        words = text.lower().replace("?", " ").replace(".", " ").split()
        return [float(words.count(w)) for w in self.VOCAB] + [0.1]

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)
