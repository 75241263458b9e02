"""expertrag: drop-in RAG components for small local models.

Heavy modules (torch, transformers, frameworks) are imported lazily: ``import expertrag``
stays fast and works without LangChain or LlamaIndex installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from expertrag.errors import (
    ContextWindowExceededError,
    EmptyCollectionError,
    ExpertError,
    ExpertRAGError,
    InputError,
    MissingStoreError,
    ModelNotFoundError,
    StoreError,
    StructuredOutputError,
    UnknownExpertError,
    UnsupportedSchemaError,
)
from expertrag.types import Document

__version__ = "0.1.0"

_LAZY = {
    "ExpertLLM": "expertrag.models.llm",
    "GenerationResult": "expertrag.models.llm",
    "ToolCall": "expertrag.models.llm",
    "load_base_model": "expertrag.models.loading",
    "Embedder": "expertrag.embeddings",
    "VectorStore": "expertrag.retrieval",
    "RAGPipeline": "expertrag.chains.naive",
}

if TYPE_CHECKING:  # pragma: no cover
    from expertrag.chains.naive import RAGPipeline
    from expertrag.embeddings import Embedder
    from expertrag.models.llm import ExpertLLM, GenerationResult, ToolCall
    from expertrag.models.loading import load_base_model
    from expertrag.retrieval import VectorStore


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'expertrag' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "ContextWindowExceededError",
    "Document",
    "Embedder",
    "EmptyCollectionError",
    "ExpertError",
    "ExpertLLM",
    "ExpertRAGError",
    "GenerationResult",
    "InputError",
    "MissingStoreError",
    "ModelNotFoundError",
    "RAGPipeline",
    "StoreError",
    "StructuredOutputError",
    "ToolCall",
    "UnknownExpertError",
    "UnsupportedSchemaError",
    "VectorStore",
    "__version__",
    "load_base_model",
]
