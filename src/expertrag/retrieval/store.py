"""A vector store over Chroma that computes embeddings with our own :class:`Embedder`.

Vectors are passed to Chroma explicitly (``embedding_function=None``) so Chroma never fetches
its default ONNX model; the collection uses cosine space and scores are cosine similarities.
The same code path serves an embedded persistent client and a remote ``HttpClient``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from expertrag.errors import EmptyCollectionError, InputError, StoreConnectionError
from expertrag.types import Document

DEFAULT_DB_PATH = "./.expertrag/chroma"
DEFAULT_COLLECTION = "expertrag"
_DEFAULT_BATCH = 256


@runtime_checkable
class DocumentEmbedder(Protocol):
    """What the store needs from an embedder (our ``Embedder`` or any test double)."""

    def embed_documents(self, texts: list[str]) -> list[list[float]]: ...

    def embed_query(self, text: str) -> list[float]: ...


def content_id(text: str, metadata: dict[str, Any] | None = None) -> str:
    """A stable id from a document's text and metadata, so re-adding it is idempotent."""
    payload = json.dumps({"text": text, "metadata": metadata or {}}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32]


def _clean_metadata(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """Chroma accepts str/int/float/bool values and no empty dicts; stringify the rest."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, (str, int, float, bool)):
            out[str(key)] = value
        else:
            out[str(key)] = (
                json.dumps(value, default=str) if not isinstance(value, Path) else str(value)
            )
    return out or None


class VectorStore:
    """Chroma collection of :class:`~expertrag.types.Document` with cosine-similarity search.

    ``VectorStore()`` opens (or creates) a persistent collection under ``./.expertrag/chroma``;
    pass ``host``/``port`` to use a Chroma server instead. ``embedder`` defaults to the embedded
    all-MiniLM-L6-v2 :class:`~expertrag.embeddings.Embedder`, which loads lazily.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = DEFAULT_DB_PATH,
        collection: str = DEFAULT_COLLECTION,
        embedder: DocumentEmbedder | None = None,
        host: str | None = None,
        port: int | None = None,
        batch_size: int = _DEFAULT_BATCH,
    ) -> None:
        if not isinstance(collection, str) or not collection.strip():
            raise InputError(f"collection name must be a non-empty string, got {collection!r}")
        if embedder is None:
            from expertrag.embeddings import Embedder

            embedder = Embedder()
        elif not isinstance(embedder, DocumentEmbedder):
            raise InputError(
                "embedder must provide embed_documents(texts) and embed_query(text), "
                f"got {type(embedder).__name__}"
            )
        self.embedder = embedder
        self.collection_name = collection
        self.path = None if host else (str(path) if path is not None else DEFAULT_DB_PATH)
        self.host = host
        self.port = port
        self.batch_size = max(1, int(batch_size))
        self._client = self._make_client()
        self._collection = self._open_collection()

    # -- client and collection -------------------------------------------------------------
    def _make_client(self) -> Any:
        import chromadb
        from chromadb.config import Settings

        settings = Settings(anonymized_telemetry=False, allow_reset=True)
        if self.host:
            port = self.port or 8000
            try:
                return chromadb.HttpClient(host=self.host, port=port, settings=settings)
            except ValueError as exc:  # chromadb's "Could not connect to a Chroma server"
                raise StoreConnectionError(
                    f"cannot reach the Chroma server at {self.host}:{port}: {exc} (start "
                    f"one with `chroma run --path DIR --port {port}`)") from exc
        assert self.path is not None
        Path(self.path).mkdir(parents=True, exist_ok=True)
        return chromadb.PersistentClient(path=self.path, settings=settings)

    def _open_collection(self) -> Any:
        from chromadb.errors import InvalidArgumentError

        try:
            return self._client.get_or_create_collection(
                name=self.collection_name,
                configuration={"hnsw": {"space": "cosine"}},
                embedding_function=None,
            )
        except InvalidArgumentError as exc:  # e.g. a name Chroma does not accept
            raise InputError(f"collection {self.collection_name!r}: {exc}") from exc

    @property
    def client(self) -> Any:
        """The underlying Chroma client (for advanced use)."""
        return self._client

    @property
    def collection(self) -> Any:
        """The underlying Chroma collection (for advanced use)."""
        return self._collection

    # -- writing ---------------------------------------------------------------------------
    def add(self, documents: Sequence[Document]) -> list[str]:
        """Embed and upsert documents in batches; returns their ids (re-adding is idempotent).

        A document without an ``id`` gets a stable hash of its text and metadata.
        """
        if isinstance(documents, Document) or not isinstance(documents, Sequence):
            raise InputError("add() takes a list of Document objects")
        for i, doc in enumerate(documents):
            if not isinstance(doc, Document):
                raise InputError(
                    f"documents[{i}] must be an expertrag Document, got {type(doc).__name__}"
                )
            if not isinstance(doc.text, str):
                raise InputError(f"documents[{i}].text must be a string")
        ids = [doc.id if doc.id else content_id(doc.text, doc.metadata) for doc in documents]
        # Duplicate ids in one upsert are rejected by Chroma: keep the last occurrence.
        latest: dict[str, int] = {}
        for i, doc_id in enumerate(ids):
            latest[doc_id] = i
        order = sorted(latest.values())
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            texts = [documents[i].text for i in chunk]
            vectors = self.embedder.embed_documents(texts)
            metadatas = [_clean_metadata(documents[i].metadata or {}) for i in chunk]
            kwargs: dict[str, Any] = {
                "ids": [ids[i] for i in chunk],
                "embeddings": vectors,
                "documents": texts,
            }
            if any(m is not None for m in metadatas):
                kwargs["metadatas"] = metadatas
            self._collection.upsert(**kwargs)
        return ids

    def delete(self, ids: Sequence[str]) -> None:
        """Remove documents by id (unknown ids are ignored)."""
        ids = self._check_ids(ids)
        if ids:
            self._collection.delete(ids=ids)

    def reset(self) -> None:
        """Drop every document in this collection (the collection itself is recreated)."""
        try:
            self._client.delete_collection(self.collection_name)
        except Exception:  # an absent collection: nothing to drop
            pass
        self._collection = self._open_collection()

    # -- reading ---------------------------------------------------------------------------
    def count(self) -> int:
        """Number of documents in the collection."""
        return int(self._collection.count())

    def ids(self, where: dict[str, Any] | None = None) -> list[str]:
        """All document ids, optionally only those whose metadata matches ``where``."""
        return list(self._collection.get(where=where or None, include=[])["ids"])

    def get(self, ids: Sequence[str]) -> list[Document]:
        """Fetch documents by id, in the order asked; unknown ids are skipped."""
        ids = self._check_ids(ids)
        if not ids:
            return []
        res = self._collection.get(ids=ids, include=["documents", "metadatas"])
        found = {
            doc_id: Document(text=text or "", id=doc_id, metadata=dict(meta or {}))
            for doc_id, text, meta in zip(
                res["ids"], res["documents"] or [], res["metadatas"] or [], strict=False
            )
        }
        return [found[i] for i in ids if i in found]

    def query(self, text: str, k: int = 4, where: dict[str, Any] | None = None) -> list[Document]:
        """Return the ``k`` nearest documents, best first, with cosine similarity in ``score``.

        Raises :class:`EmptyCollectionError` when nothing has been ingested yet.
        """
        if not isinstance(text, str) or not text.strip():
            raise InputError("query text must be a non-empty string")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        total = self.count()
        if total == 0:
            raise EmptyCollectionError(
                f"collection {self.collection_name!r} is empty: ingest documents first "
                "(e.g. `expertrag ingest FOLDER`)"
            )
        vector = self.embedder.embed_query(text)
        res = self._collection.query(
            query_embeddings=[vector],
            n_results=min(k, total),
            where=where or None,
            include=["documents", "metadatas", "distances"],
        )
        ids = res["ids"][0]
        texts = (res.get("documents") or [[]])[0] or []
        metas = (res.get("metadatas") or [[]])[0] or []
        dists = (res.get("distances") or [[]])[0] or []
        return [
            Document(
                text=texts[i] or "",
                id=ids[i],
                metadata=dict(metas[i] or {}) if i < len(metas) else {},
                score=1.0 - float(dists[i]) if i < len(dists) else None,
            )
            for i in range(len(ids))
        ]

    @staticmethod
    def _check_ids(ids: Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            return [ids]
        out = list(ids)
        for i, doc_id in enumerate(out):
            if not isinstance(doc_id, str):
                raise InputError(f"ids[{i}] must be a string, got {type(doc_id).__name__}")
        return out

    def __len__(self) -> int:
        return self.count()

    def __repr__(self) -> str:
        where = f"{self.host}:{self.port or 8000}" if self.host else self.path
        return f"VectorStore(collection={self.collection_name!r}, at={where!r})"
