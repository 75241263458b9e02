"""The ingest manifest: which files a collection holds, committed file by file.

An ingest writes each file's chunks and only then commits the file's entry here (one atomic
write: temp file + ``os.replace``, or one Chroma metadata update on a server). Before any of a
file's chunks are written, the file is recorded as *pending*; a pending file is never served
(:meth:`VectorStore.query` drops its chunks) and the next ingest finishes it (the file is still
there) or removes its chunks (the file is gone). So a run killed at any point leaves every
file either whole or invisible.

A store without a manifest (documents added with ``VectorStore.add``, or a collection built
before manifests existed) is served as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expertrag.errors import StoreError

MANIFEST_FORMAT = 1
#: the collection metadata key that holds the manifest on a Chroma server
METADATA_KEY = "expertrag_manifest"


@dataclass
class FileEntry:
    """One ingested file: ``key`` (``root/relative path``) prefixes its chunk ids."""

    key: str
    root: str
    source: str
    version: str
    chunks: int
    size: int = 0


@dataclass
class Manifest:
    """Committed files and files being written (``pending``), by key."""

    files: dict[str, FileEntry] = field(default_factory=dict)
    pending: dict[str, FileEntry] = field(default_factory=dict)
    #: the embedding model the chunks were embedded with ("" when not known)
    embedding: str = ""
    exists: bool = False  # False: no ingest ever committed here (a plain collection)

    def hidden_keys(self) -> set[str]:
        """Keys whose chunks must not be served: files half-written by an interrupted run."""
        return set(self.pending)

    def served_chunks(self) -> int:
        return sum(e.chunks for e in self.files.values())

    def to_json(self) -> str:
        return json.dumps({
            "format": MANIFEST_FORMAT,
            "embedding": self.embedding,
            "files": {k: asdict(v) for k, v in sorted(self.files.items())},
            "pending": {k: asdict(v) for k, v in sorted(self.pending.items())},
        }, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            if data.get("format") != MANIFEST_FORMAT:
                raise ValueError(f"unknown format {data.get('format')!r}")
            files = {k: FileEntry(**v) for k, v in (data.get("files") or {}).items()}
            pending = {k: FileEntry(**v) for k, v in (data.get("pending") or {}).items()}
            embedding = str(data.get("embedding") or "")
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(
                f"the ingest manifest {where} is unreadable ({exc}): delete it and ingest "
                "again (every file is then re-embedded), or ingest into a new --db") from exc
        return cls(files=files, pending=pending, embedding=embedding, exists=True)


class ManifestFile:
    """The manifest of an embedded store: a JSON file beside Chroma's own files."""

    def __init__(self, db_path: str | os.PathLike[str], collection: str) -> None:
        self.path = Path(db_path) / f"expertrag-manifest.{collection}.json"

    def load(self) -> Manifest:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return Manifest()
        except OSError as exc:
            raise StoreError(f"cannot read the ingest manifest {self.path}: {exc}") from exc
        return Manifest.from_json(text, str(self.path))

    def stamp(self) -> tuple[int, int] | None:
        """The file's (mtime, size), to tell cheaply whether another process committed."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def save(self, manifest: Manifest) -> None:
        """Write atomically: a crash leaves the previous manifest or this one, never half."""
        try:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-manifest-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(manifest.to_json())
                    handle.flush()
                    os.fsync(handle.fileno())
                os.chmod(tmp, 0o644)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise StoreError(f"cannot write the ingest manifest {self.path}: {exc}") from exc
        manifest.exists = True

    def delete(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the collection's ingest lock: two ingests into one collection at once would
        overwrite each other's manifest entries, so the second is refused."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            yield
            return
        lock_path = self.path.with_suffix(".lock")
        with open(lock_path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                raise StoreError(
                    f"another ingest into this collection is running ({lock_path} is "
                    "locked): wait for it to finish") from exc
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


class ManifestMetadata:
    """The manifest of a collection on a Chroma server: one key of the collection's metadata
    (a single update, so atomic on the server's side)."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection

    def load(self) -> Manifest:
        text = (self.collection.metadata or {}).get(METADATA_KEY)
        if not text:
            return Manifest()
        return Manifest.from_json(str(text), f"of collection {self.collection.name!r}")

    def save(self, manifest: Manifest) -> None:
        meta = {k: v for k, v in (self.collection.metadata or {}).items()
                if not k.startswith("hnsw:")}
        meta[METADATA_KEY] = manifest.to_json()
        self.collection.modify(metadata=meta)
        manifest.exists = True

    def stamp(self) -> None:  # asking the server each time would cost a request per query
        return None

    def delete(self) -> None:  # the collection's metadata goes with the collection
        return None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:  # a server has no shared lock to take
        yield
