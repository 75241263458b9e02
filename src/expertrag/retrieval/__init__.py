"""Retrieval: the Chroma-backed vector store (embedded and persistent, or a Chroma server)."""

from __future__ import annotations

from expertrag.retrieval.store import DocumentEmbedder, VectorStore, content_id, open_store

__all__ = ["DocumentEmbedder", "VectorStore", "content_id", "open_store"]
