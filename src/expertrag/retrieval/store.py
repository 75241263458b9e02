"""A vector store over Chroma that computes embeddings with our own :class:`Embedder`.

Vectors are passed to Chroma explicitly (``embedding_function=None``) so Chroma never fetches
its default ONNX model; the collection uses cosine space and scores are cosine similarities.
The same code path serves an embedded persistent client and a remote ``HttpClient``.

``read_only=True`` (what ``expertrag ask`` uses) opens an existing collection and creates
nothing: a missing database or collection is a :class:`~expertrag.errors.MissingStoreError`,
and writes are refused. Every Chroma failure (a corrupt database, a path that is a file)
surfaces as a :class:`~expertrag.errors.StoreError` saying what to do. Files an ingest left
half-written (see :mod:`expertrag.retrieval.manifest`) are never returned by a query.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from expertrag.errors import (
    EmptyCollectionError,
    InputError,
    MissingStoreError,
    StoreConnectionError,
    StoreError,
)
from expertrag.retrieval.manifest import Manifest, ManifestFile, ManifestMetadata
from expertrag.types import Document

DEFAULT_DB_PATH = "./.expertrag/chroma"
DEFAULT_COLLECTION = "expertrag"
_DEFAULT_BATCH = 256
#: the file Chroma keeps its tables in; a folder without it holds no database
CHROMA_FILE = "chroma.sqlite3"


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
    ``read_only=True`` opens an existing collection only and refuses writes.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = DEFAULT_DB_PATH,
        collection: str = DEFAULT_COLLECTION,
        embedder: DocumentEmbedder | None = None,
        host: str | None = None,
        port: int | None = None,
        batch_size: int = _DEFAULT_BATCH,
        read_only: bool = False,
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
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = batch_size
        self.read_only = bool(read_only)
        self._client = self._make_client()
        self._collection = self._open_collection()
        self._manifest: Manifest | None = None
        self._manifest_stamp: tuple[int, int] | None = None

    @contextlib.contextmanager
    def _chroma(self, doing: str) -> Iterator[None]:
        """Turn Chroma's own errors into a :class:`StoreError` naming the store."""
        from chromadb.errors import ChromaError

        try:
            yield
        except ChromaError as exc:
            where = f"{self.host}:{self.port or 8000}" if self.host else self.path
            if "dimension" in str(exc):
                known = getattr(self, "_manifest", None)
                used = known.embedding if known is not None else ""
                hint = f" (it was ingested with {used!r})" if used else ""
                raise StoreError(
                    f"collection {self.collection_name!r} at {where} holds vectors of "
                    f"another size than this embedder makes{hint}: {exc}; use the embedding "
                    "model it was ingested with (--embedding-model)") from exc
            raise StoreError(
                f"Chroma failed {doing} (collection {self.collection_name!r} at {where}): "
                f"{exc}; if the disk is not full, the database may be damaged: ingest your "
                "folders again into a new --db folder") from exc

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
        folder = Path(self.path)
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"database path {folder} is a file, not a folder: give a folder "
                             "(a new one is created when ingesting)")
        if self.read_only and not (folder / CHROMA_FILE).is_file():
            raise MissingStoreError(
                f"no database at {folder}: ingest documents first with "
                f"`expertrag ingest FOLDER --db {folder}` (or pass the --db you ingested into)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the database folder {folder}: {exc}") from exc
        try:
            with self._chroma("to open the database"):
                try:
                    return chromadb.PersistentClient(path=self.path, settings=settings)
                except ValueError as exc:  # this process opened it with other settings
                    raise StoreError(f"cannot open the Chroma database at {folder}: {exc}; "
                                     "open it through expertrag.VectorStore only") from exc
        except StoreError:
            _forget_failed_client(self.path)
            raise

    def _open_collection(self) -> Any:
        from chromadb.errors import InvalidArgumentError, NotFoundError

        if self.read_only:
            try:
                with self._chroma("to open the collection"):
                    return self._client.get_collection(name=self.collection_name,
                                                       embedding_function=None)
            except StoreError as exc:
                if not isinstance(exc.__cause__, NotFoundError | InvalidArgumentError):
                    raise
                with self._chroma("to list the collections"):
                    names = sorted(c.name for c in self._client.list_collections())
                where = f"{self.host}:{self.port or 8000}" if self.host else self.path
                have = ", ".join(repr(n) for n in names) or "none: ingest documents first"
                raise MissingStoreError(
                    f"no collection {self.collection_name!r} at {where}; collections there: "
                    f"{have}") from None
        try:
            with self._chroma("to open the collection"):
                return self._client.get_or_create_collection(
                    name=self.collection_name,
                    configuration={"hnsw": {"space": "cosine"}},
                    embedding_function=None,
                )
        except StoreError as exc:
            if isinstance(exc.__cause__, InvalidArgumentError):  # a name Chroma refuses
                raise InputError(f"collection {self.collection_name!r}: "
                                 f"{exc.__cause__}") from exc.__cause__
            raise

    def _writable(self, doing: str) -> None:
        if self.read_only:
            raise StoreError(f"cannot {doing}: collection {self.collection_name!r} was opened "
                             "read-only (open it with read_only=False to write)")

    # -- the ingest manifest -----------------------------------------------------------------
    def manifest_storage(self) -> ManifestFile | ManifestMetadata:
        """Where this collection's ingest manifest lives (a file beside an embedded
        database; the collection's metadata on a server)."""
        if self.host:
            return ManifestMetadata(self._collection)
        assert self.path is not None
        return ManifestFile(self.path, self.collection_name)

    @property
    def manifest(self) -> Manifest:
        """The ingest manifest; an embedded store reads it again whenever the file changed
        (an ingest in another process marked a file pending or committed one), so a
        long-lived reader never serves a file that is being rewritten. On a server it is
        read once (:meth:`reload_manifest` reads it again)."""
        storage = self.manifest_storage()
        stamp = storage.stamp()
        if self._manifest is None or stamp != self._manifest_stamp:
            self._manifest = storage.load()
            self._manifest_stamp = stamp
        return self._manifest

    def reload_manifest(self) -> Manifest:
        self._manifest = None
        return self.manifest

    def _served(self, docs: list[Document]) -> list[Document]:
        """Drop chunks of files an interrupted ingest left half-written."""
        hidden = self.manifest.hidden_keys()
        if not hidden:
            return docs
        return [d for d in docs if (d.metadata or {}).get("file_key") not in hidden]

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
        self._writable("add documents")
        if isinstance(documents, Document) or not isinstance(documents, Sequence) \
                or isinstance(documents, str):
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
            with self._chroma("to write documents"):
                self._collection.upsert(**kwargs)
        return ids

    def delete(self, ids: Sequence[str]) -> None:
        """Remove documents by id (unknown ids are ignored)."""
        self._writable("delete documents")
        ids = self._check_ids(ids)
        for start in range(0, len(ids), self.batch_size * 16):
            with self._chroma("to delete documents"):
                self._collection.delete(ids=ids[start:start + self.batch_size * 16])

    def reset(self) -> None:
        """Drop every document in this collection (the collection itself is recreated) and
        its ingest manifest."""
        from chromadb.errors import NotFoundError

        self._writable("reset the collection")
        try:
            self._client.delete_collection(self.collection_name)
        except NotFoundError:  # an absent collection: nothing to drop
            pass
        self.manifest_storage().delete()
        self._manifest = None
        self._collection = self._open_collection()

    # -- reading ---------------------------------------------------------------------------
    def count(self) -> int:
        """Number of documents in the collection (stored chunks, served or not)."""
        with self._chroma("to count documents"):
            return int(self._collection.count())

    def served_count(self) -> int:
        """Documents a query can return: all of them, less the chunks of files an interrupted
        ingest left half-written (:mod:`~expertrag.retrieval.manifest`)."""
        total = self.count()
        return total - self._hidden_count() if total else 0

    def check(self) -> None:
        """Check the embedded database file page by page (SQLite's ``quick_check``, opened
        read-only) and raise :class:`StoreError` if it is damaged: a damaged page that no
        query has touched yet would otherwise go unnoticed until one does. Takes about a
        second per GB; a server store is not checked."""
        import sqlite3

        if self.host or self.path is None:
            return
        db_file = Path(self.path) / CHROMA_FILE
        if not db_file.is_file():
            return
        try:
            with contextlib.closing(sqlite3.connect(f"{db_file.resolve().as_uri()}?mode=ro",
                                                    uri=True)) as conn:
                rows = conn.execute("PRAGMA quick_check").fetchall()
        except sqlite3.DatabaseError as exc:
            rows = [(str(exc),)]
        problems = [str(r[0]) for r in rows if str(r[0]).lower() != "ok"]
        if problems:
            raise StoreError(f"the Chroma database {db_file} is damaged ({problems[0]}"
                             f"{f' and {len(problems) - 1} more problems' if problems[1:] else ''}"
                             "): ingest your folders again into a new --db folder")

    def _hidden_count(self) -> int:
        hidden = self.manifest.hidden_keys()
        if not hidden:
            return 0
        return len(self.ids(where={"file_key": {"$in": sorted(hidden)}}))

    def ids(self, where: dict[str, Any] | None = None) -> list[str]:
        """All document ids, optionally only those whose metadata matches ``where``."""
        with self._chroma("to list documents"):
            return list(self._collection.get(where=where or None, include=[])["ids"])

    def metadata(self, where: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
        """``(id, metadata)`` of every document matching ``where`` (no texts, no vectors)."""
        with self._chroma("to list documents"):
            res = self._collection.get(where=where or None, include=["metadatas"])
        return [(i, dict(m or {})) for i, m in zip(res["ids"], res["metadatas"] or [],
                                                    strict=False)]

    def get(self, ids: Sequence[str]) -> list[Document]:
        """Fetch documents by id, in the order asked; unknown ids are skipped."""
        ids = self._check_ids(ids)
        if not ids:
            return []
        with self._chroma("to read documents"):
            res = self._collection.get(ids=ids, include=["documents", "metadatas"])
        found = {
            doc_id: Document(text=text or "", id=doc_id, metadata=dict(meta or {}))
            for doc_id, text, meta in zip(
                res["ids"], res["documents"] or [], res["metadatas"] or [], strict=False
            )
        }
        return self._served([found[i] for i in ids if i in found])

    def query(self, text: str, k: int = 4, where: dict[str, Any] | None = None) -> list[Document]:
        """Return the ``k`` nearest documents, best first, with cosine similarity in ``score``.

        Raises :class:`EmptyCollectionError` when nothing has been ingested yet.
        """
        if not isinstance(text, str) or not text.strip():
            raise InputError("query text must be a non-empty string")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        if where is not None and not isinstance(where, dict):
            raise InputError(f"where must be a dict of metadata filters, got {where!r}")
        total = self.count()
        if total == 0:
            raise EmptyCollectionError(
                f"collection {self.collection_name!r} is empty: ingest documents first "
                "(e.g. `expertrag ingest FOLDER`)"
            )
        # ask for enough extra hits to fill k after the hidden (half-written) chunks go
        extra = self._hidden_count()
        vector = self.embedder.embed_query(text)
        with self._chroma("to search"):
            res = self._collection.query(
                query_embeddings=[vector],
                n_results=min(k + extra, total),
                where=where or None,
                include=["documents", "metadatas", "distances"],
            )
        ids = res["ids"][0]
        asked = min(k + extra, total)
        if where is None and len(ids) * 2 < asked:
            # the collection holds the documents, its vector index does not: index files
            # missing or damaged (e.g. a database folder copied without its subfolders)
            where_at = f"{self.host}:{self.port or 8000}" if self.host else self.path
            raise StoreError(
                f"the vector index of collection {self.collection_name!r} at {where_at} "
                f"returned {len(ids)} of {asked} passages although it holds {total}: its "
                "index files are missing or damaged; ingest your folders again into a new "
                "--db folder")
        texts = (res.get("documents") or [[]])[0] or []
        metas = (res.get("metadatas") or [[]])[0] or []
        dists = (res.get("distances") or [[]])[0] or []
        return self._served([
            Document(
                text=texts[i] or "",
                id=ids[i],
                metadata=dict(metas[i] or {}) if i < len(metas) else {},
                score=1.0 - float(dists[i]) if i < len(dists) else None,
            )
            for i in range(len(ids))
        ])[:k]

    @staticmethod
    def _check_ids(ids: Sequence[str]) -> list[str]:
        if isinstance(ids, str):
            return [ids]
        if not isinstance(ids, Sequence | set | frozenset):
            raise InputError(f"ids must be a list of strings, got {type(ids).__name__}")
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


def _forget_failed_client(path: str) -> None:
    """Chroma caches a client's system per folder before starting it, and keeps it when
    starting fails: every later open of that folder in this process would then meet a
    half-built client (``AttributeError: ... no attribute 'bindings'``). Drop it, so the next
    open tries afresh (and reports the real problem again)."""
    from chromadb.api.shared_system_client import SharedSystemClient

    systems = getattr(SharedSystemClient, "_identifier_to_system", None)
    counts = getattr(SharedSystemClient, "_identifier_to_refcount", {})
    if isinstance(systems, dict) and path in systems and not counts.get(path):
        systems.pop(path, None)


def open_store(path: str | os.PathLike[str] = DEFAULT_DB_PATH,
               collection: str = DEFAULT_COLLECTION, *, read_only: bool = False,
               embedding_model: str | None = None) -> VectorStore:
    """A persistent store with the right embedder: ``embedding_model`` when given (an alias,
    a local sentence-transformers folder or a hub id), else the model the collection was
    ingested with (recorded in its manifest), else the embedded all-MiniLM-L6-v2. What the
    CLI's ``ingest``, ``ask`` and ``eval --db`` open."""
    from expertrag.embeddings import Embedder

    if embedding_model is not None and (not isinstance(embedding_model, str)
                                        or not embedding_model.strip()):
        raise InputError(f"embedding_model must be a model name or folder, got "
                         f"{embedding_model!r}")
    store = VectorStore(path=path, collection=collection,
                        embedder=Embedder(embedding_model) if embedding_model else None,
                        read_only=read_only)
    used = store.manifest.embedding
    if used and not embedding_model and isinstance(store.embedder, Embedder) \
            and store.embedder.model_name != used:
        store.embedder = Embedder(used)  # lazy: nothing loaded yet
    return store
