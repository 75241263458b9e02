"""Cross-encoder reranker over any HuggingFace sequence-classification model.

Why not just ``CrossEncoder.predict``: that sorts by length but still cuts fixed batches of 32,
so one query's 32 candidates of mixed length make one batch padded to the longest passage.
Here all pairs are tokenized in one fast-tokenizer call, and the batches are planned from the
*token* lengths to minimise padded cost (``expertrag.models.batching.plan_batches``): long
passages go in small batches, short ones in large batches. Scores are unchanged (padding is
masked); on mixed-length candidates it is much faster on a CPU (benchmarks/RESULTS.md,
"Rerankers"). Model work runs under ``torch.inference_mode`` (half precision on CUDA) on one
dedicated worker thread (see ``expertrag.models.worker``), so sync and async callers share
one set of OpenMP pools.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from expertrag.errors import InputError, ModelNotFoundError
from expertrag.models.batching import (
    attention_span,
    default_overhead,
    pad_rows,
    plan_batches,
)
from expertrag.models.worker import ModelWorker
from expertrag.rerank.base import Reranker, check_query

_HUGE = 100_000  # tokenizers without a limit report model_max_length ~1e30


class CrossEncoderReranker(Reranker):
    """Scores (query, passage) pairs with a cross-encoder; loads lazily on first use.

    ``model`` is a HF id or local directory (safetensors only, no remote code), a
    ``sentence_transformers.CrossEncoder``, or a loaded ``PreTrainedModel`` (then pass
    ``tokenizer``). Scores: the logit for one-label models (``activation="sigmoid"`` maps it
    to 0..1), softmax of the "relevant" (index 1) class for two-label models.
    """

    name = "cross-encoder"

    def __init__(
        self,
        model: Any,
        *,
        tokenizer: Any = None,
        batch_size: int = 32,
        max_length: int | None = None,
        device: str | None = None,
        dtype: Any = None,
        sort_by_length: bool = True,
        activation: str | None = None,
        max_batch_tokens: int | None = None,
        batch_overhead: int | None = None,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int)
                                             or max_batch_tokens < 1):
            raise InputError(f"max_batch_tokens must be a positive integer, "
                             f"got {max_batch_tokens!r}")
        if batch_overhead is not None and (not isinstance(batch_overhead, int)
                                           or batch_overhead < 0):
            raise InputError(f"batch_overhead must be a non-negative integer, "
                             f"got {batch_overhead!r}")
        if activation not in (None, "sigmoid"):
            raise InputError(f"activation must be None or 'sigmoid', got {activation!r}")
        if isinstance(model, str) and not model.strip():
            raise InputError("model must be a non-empty id or path")
        self._source = model
        self._tokenizer_arg = tokenizer
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = device
        self.dtype = dtype
        self.sort_by_length = sort_by_length
        self.activation = activation
        self.max_batch_tokens = max_batch_tokens
        self.batch_overhead = batch_overhead
        self._model: Any = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._worker: ModelWorker | None = None
        if isinstance(model, str):
            self.name = model

    # ------------------------------------------------------------------ loading
    @property
    def worker(self) -> ModelWorker:
        if self._worker is None:
            with self._lock:
                if self._worker is None:
                    self._worker = ModelWorker("expertrag-cross-encoder")
        return self._worker

    def load(self) -> CrossEncoderReranker:
        """Load the model and tokenizer now (idempotent)."""
        if self._model is None:
            self.worker.run(self._load)
        return self

    def _load(self) -> None:
        import torch

        src = self._source
        if isinstance(src, (str, Path)):
            model, tokenizer = _from_pretrained(str(src))
        elif hasattr(src, "predict") and hasattr(src, "tokenizer"):  # sentence-transformers
            model, tokenizer = src.model, src.tokenizer
            limit = getattr(src, "max_seq_length", None)
            if self.max_length is None and limit:
                self.max_length = int(limit)
        else:
            if self._tokenizer_arg is None:
                raise InputError("a loaded model needs tokenizer=...")
            model, tokenizer = src, None
        tokenizer = self._tokenizer_arg or tokenizer
        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = _resolve_dtype(self.dtype, device)
        model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
        model.eval()
        num_labels = int(getattr(model.config, "num_labels", 1))
        if num_labels not in (1, 2):
            raise InputError(f"cross-encoder must have 1 or 2 labels, this one has {num_labels}")
        limits = [n for n in (getattr(tokenizer, "model_max_length", None),
                              getattr(model.config, "max_position_embeddings", None))
                  if n and n < _HUGE]
        limit = min(limits) if limits else 512
        self.max_length = min(self.max_length, limit) if self.max_length else limit
        self._tokenizer, self.device = tokenizer, str(device)
        self._model = model

    # ------------------------------------------------------------------ scoring
    def score(self, query: str, texts: list[str]) -> list[float]:
        """Relevance of each text to `query` (model runs on the reranker's worker)."""
        check_query(query)
        if not texts:
            return []
        return self.worker.run(lambda: self._score(query, list(texts)))

    async def ascore(self, query: str, texts: list[str]) -> list[float]:
        check_query(query)
        if not texts:
            return []
        return await self.worker.arun(lambda: self._score(query, list(texts)))

    def score_pairs(self, pairs: list[tuple[str, str]]) -> list[float]:
        """Scores for arbitrary (query, passage) pairs (benchmarks, LangChain-style use)."""
        if not pairs:
            return []
        queries = [q for q, _ in pairs]
        texts = [t for _, t in pairs]
        return self.worker.run(lambda: self._score(queries, texts))

    def _score(self, query: str | list[str], texts: list[str]) -> list[float]:
        import torch

        if self._model is None:
            self._load()
        queries = [query] * len(texts) if isinstance(query, str) else query
        features = self._tokenize(queries, texts)
        scores = [0.0] * len(texts)
        pad = self._tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for rows in self.plan([len(ids) for ids in features["input_ids"]]):
                batch = _pad_batch(features, rows, pad, self._model.device)
                logits = self._model(**batch).logits.float()
                for i, value in zip(rows, self._to_scores(logits).tolist(), strict=True):
                    scores[i] = value
        return scores

    def plan(self, lengths: list[int]) -> list[list[int]]:
        """The batches (row indices) for inputs of these token lengths."""
        if not self.sort_by_length:
            return [list(range(s, min(s + self.batch_size, len(lengths))))
                    for s in range(0, len(lengths), self.batch_size)]
        overhead = (self.batch_overhead if self.batch_overhead is not None
                    else default_overhead(self.device))
        config = getattr(self._model, "config", None)
        return plan_batches(lengths, max_rows=self.batch_size, overhead=overhead,
                            span=attention_span(config), max_tokens=self.max_batch_tokens)

    def _tokenize(self, queries: list[str], texts: list[str]) -> dict[str, list[list[int]]]:
        kwargs = {"max_length": self.max_length, "padding": False, "return_attention_mask": False}
        try:
            return self._tokenizer(queries, texts, truncation="only_second", **kwargs)
        except Exception:  # the query alone exceeds the limit: cut both sides
            return self._tokenizer(queries, texts, truncation="longest_first", **kwargs)

    def _to_scores(self, logits: Any) -> Any:
        import torch

        if logits.shape[-1] == 2:
            return torch.softmax(logits, dim=-1)[:, 1]
        logits = logits[:, 0]
        return torch.sigmoid(logits) if self.activation == "sigmoid" else logits

    def close(self) -> None:
        """Stop the worker thread (the reranker reopens it if used again)."""
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def __repr__(self) -> str:
        return (f"CrossEncoderReranker(model={self.name!r}, batch_size={self.batch_size}, "
                f"sort_by_length={self.sort_by_length})")


def _from_pretrained(source: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(source)
    if path.is_dir() and not any(path.glob("*.safetensors")):
        raise ModelNotFoundError(
            f"{source} has no .safetensors weights (pickle checkpoints are refused)"
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            source, use_safetensors=True, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load cross-encoder {source!r}: {exc}") from exc
    return model, tokenizer


def _resolve_dtype(dtype: Any, device: str) -> Any:
    import torch

    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    if dtype is not None:
        return dtype
    if str(device).startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return None



def _pad_batch(features: dict[str, list[list[int]]], rows: list[int], pad: int,
               device: Any) -> dict[str, Any]:
    """Right-pad the selected rows to the longest of them (no padding across batches)."""
    ids, mask = pad_rows([features["input_ids"][i] for i in rows], pad)
    batch = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in features:
        batch["token_type_ids"] = pad_rows([features["token_type_ids"][i] for i in rows], 0)[0]
    return {k: v.to(device) for k, v in batch.items()}
