"""Load text files, split them into overlapping chunks, and ingest them into a vector store.

The splitter works on character counts and prefers, in order, paragraph, sentence and word
boundaries. Chunk ids are deterministic, ``"{root}/{relative path}#{index}"`` with the
folder's absolute path (or a given source name) as root, so re-ingesting a folder upserts the
same ids and two folders never collide. :func:`ingest_folder` is a sync: unchanged files are
skipped by content hash, each file is committed all-or-nothing through the collection's
manifest, and files gone from the folder can be pruned.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertrag.errors import InputError, InvalidFilesError
from expertrag.types import Document

if TYPE_CHECKING:  # pragma: no cover
    from expertrag.retrieval import VectorStore

DEFAULT_PATTERNS: tuple[str, ...] = ("*.txt", "*.md")
DEFAULT_CHUNK_SIZE = 800
DEFAULT_CHUNK_OVERLAP = 100

# Boundaries are the positions where the next unit starts (just after the separator).
_PARAGRAPH_RE = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n\s*")
_WORD_RE = re.compile(r"\s+")


# -- loading --------------------------------------------------------------------------------
_BINARY_REASON = ("holds NUL bytes: a binary file (or UTF-16 text), not UTF-8 text; convert "
                  "it to UTF-8 or leave it out of the folder")


def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _read_bytes(path: Path) -> tuple[bytes | None, str | None, str | None]:
    """``(raw, text, None)``, or ``(raw, None, reason)`` when the file cannot be ingested."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, None, f"cannot be read ({exc.strerror or exc})"
    if b"\x00" in raw:
        return raw, None, _BINARY_REASON
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return raw, None, f"is not valid UTF-8 text (byte {exc.start}): convert it to UTF-8"
    if not text.strip():
        return raw, None, "is empty"
    return raw, text, None


def _read(path: Path) -> tuple[str | None, str | None]:
    """``(text, None)``, or ``(None, reason)`` when the file cannot be ingested."""
    _, text, reason = _read_bytes(path)
    return text, reason


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file; an empty, binary or undecodable file raises
    :class:`InputError`."""
    path = Path(path)
    text, reason = _read(path)
    if text is None:
        raise InputError(f"{path} {reason}")
    return text


def source_root(folder: str | os.PathLike[str], source: str | None = None) -> str:
    """The name a folder's files are filed under: ``source`` when given (a stable name that
    survives moving the folder), else the folder's absolute path. Chunk ids are
    ``"{root}/{relative path}#{index}"``, so two folders never share an id."""
    if source is None:
        return Path(folder).resolve().as_posix()
    if not isinstance(source, str) or not source.strip("/ ").strip():
        raise InputError(f"source must be a non-empty name, got {source!r}")
    return source.strip().strip("/")


@dataclass
class _Scan:
    root: Path
    files: list[Path]
    linked_dirs: list[tuple[str, str]]


def _scan(folder: str | os.PathLike[str], patterns: Sequence[str]) -> _Scan:
    if isinstance(patterns, str):
        patterns = (patterns,)
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder" + (
            " (it is a file: pass the folder that holds it)" if root.is_file() else ""))
    found: set[Path] = set()
    for pattern in patterns:
        for path in root.rglob(pattern):
            if path.is_file() and not _is_hidden(path.relative_to(root)):
                found.add(path)
    linked: list[tuple[str, str]] = []
    for dirpath, dirnames, _ in os.walk(root):  # symlinked folders are listed, not entered
        for name in sorted(dirnames):
            full = Path(dirpath) / name
            relative = full.relative_to(root)
            if full.is_symlink() and not _is_hidden(relative):
                linked.append((relative.as_posix() + "/", "is a symbolic link to a folder "
                               f"({os.readlink(full)}): not followed; ingest its target on "
                               "its own (expertrag ingest TARGET)"))
    files = sorted(found, key=lambda p: p.relative_to(root).as_posix())
    return _Scan(root, files, linked)


def load_folder(
    folder: str | os.PathLike[str], patterns: Sequence[str] = DEFAULT_PATTERNS,
    skip_invalid: bool = False, source: str | None = None,
) -> list[Document]:
    """Load every file under ``folder`` (recursively) matching ``patterns``, sorted by path.

    Each document's id is ``"{root}/{relative path}"`` (``root``: ``source`` if given, else
    the folder's absolute path), so files of two folders never share an id;
    ``metadata["source"]`` is the path relative to ``folder`` (POSIX style),
    ``metadata["root"]`` the root and ``metadata["path"]`` the absolute path. Hidden files
    and folders are skipped; symbolic links to folders are not followed. Files that are not
    UTF-8, binary (NUL bytes), empty or unreadable raise one :class:`InvalidFilesError`
    listing all of them; with ``skip_invalid`` they are left out instead.
    """
    return [doc for doc, _ in _load_folder(folder, patterns, skip_invalid, source)[0]]


def _load_folder(
    folder: str | os.PathLike[str], patterns: Sequence[str], skip_invalid: bool,
    source: str | None = None, allow_empty: bool = False,
) -> tuple[list[tuple[Document, str]], list[tuple[str, str]], _Scan]:
    """``([(document, content hash)], [(relative path, reason)], scan)``."""
    scan = _scan(folder, patterns)
    root_name = source_root(scan.root, source)
    if not scan.files and not allow_empty:
        raise InputError(f"no files matching {', '.join(patterns)} in {scan.root}" + (
            f" ({len(scan.linked_dirs)} symbolic links to folders were not followed: "
            "ingest their targets)" if scan.linked_dirs else ""))
    docs: list[tuple[Document, str]] = []
    problems: list[tuple[str, str]] = []
    for path in scan.files:
        relative = path.relative_to(scan.root).as_posix()
        raw, text, reason = _read_bytes(path)
        if text is None or raw is None:
            problems.append((relative, reason or "cannot be ingested"))
            continue
        key = f"{root_name}/{relative}"
        docs.append((Document(
            text=text,
            id=key,
            metadata={"source": relative, "root": root_name, "file_key": key,
                      "path": str(path.resolve())},
        ), hashlib.sha256(raw).hexdigest()))
    if problems and (not skip_invalid or (not docs and not allow_empty)):
        listing = "\n".join(f"  {name} {reason}" for name, reason in problems)
        hint = ("fix or remove them, or pass skip_invalid (--skip-invalid) to ingest the rest"
                if docs else "no file in the folder can be ingested")
        raise InvalidFilesError(
            f"{len(problems)} of {len(scan.files)} files in {scan.root} cannot be ingested "
            f"({hint}):\n{listing}", problems)
    return docs, problems, scan


# -- chunking -------------------------------------------------------------------------------
def _boundaries(regex: re.Pattern[str], text: str) -> list[int]:
    return sorted({m.end() for m in regex.finditer(text) if 0 < m.end() < len(text)})


def _last_in(bounds: list[int], low: int, high: int) -> int | None:
    """The largest boundary in ``[low, high]``, or None."""
    i = bisect.bisect_right(bounds, high) - 1
    return bounds[i] if i >= 0 and bounds[i] >= low else None


def _first_in(bounds: list[int], low: int, high: int) -> int | None:
    """The smallest boundary in ``[low, high]``, or None."""
    i = bisect.bisect_left(bounds, low)
    return bounds[i] if i < len(bounds) and bounds[i] <= high else None


def split_text(
    text: str, chunk_size: int = DEFAULT_CHUNK_SIZE, chunk_overlap: int = DEFAULT_CHUNK_OVERLAP
) -> list[tuple[int, str]]:
    """Split ``text`` into ``(start_offset, chunk)`` pairs of at most ``chunk_size`` characters.

    Each chunk ends at the last paragraph boundary that keeps it at least a quarter full (so a
    short heading stays with its paragraph), else the last such sentence boundary, else the last
    such word boundary (then the same without the quarter rule), else it is cut hard. The next
    chunk starts inside the last ``chunk_overlap`` characters of the previous one, at a sentence
    boundary if there is one, else a word one (a hard cut overlaps by exactly that many
    characters).
    Chunks are stripped of surrounding whitespace; offsets index into ``text``.
    """
    _check_sizes(chunk_size, chunk_overlap)
    end_of_text = len(text.rstrip())
    start = len(text) - len(text.lstrip())
    if start >= end_of_text:
        return []
    paragraphs = _boundaries(_PARAGRAPH_RE, text)
    sentences = sorted(set(_boundaries(_SENTENCE_RE, text)) | set(paragraphs))
    words = sorted(set(_boundaries(_WORD_RE, text)) | set(sentences))
    min_fill = max(1, chunk_size // 4)
    chunks: list[tuple[int, str]] = []
    min_end = start + 1
    while True:
        limit = start + chunk_size
        if end_of_text <= limit:
            end = end_of_text
        else:
            # Every chunk must reach past the previous one, or the loop would stall.
            floor = max(start + 1, min_end)
            filled = max(start + min_fill, floor)
            end = (
                _last_in(paragraphs, filled, limit)
                or _last_in(sentences, filled, limit)
                or _last_in(words, filled, limit)
                or _last_in(sentences, floor, limit)
                or _last_in(words, floor, limit)
                or limit
            )
        # A hard cut splits a word; only then does the overlap fall back to raw characters.
        hard_cut = end < end_of_text and not (text[end - 1].isspace() or text[end].isspace())
        piece = text[start:end].rstrip()
        chunks.append((start, piece))
        if end >= end_of_text:
            return chunks
        # The next chunk must hold at least one non-space character past this one.
        min_end = start + len(piece)
        while min_end < end_of_text and text[min_end].isspace():
            min_end += 1
        min_end += 1
        next_start = end
        if chunk_overlap:
            # ...and must still reach past this one within chunk_size characters.
            window = max(start + 1, end - chunk_overlap, min_end - chunk_size)
            next_start = (
                _first_in(sentences, window, end - 1)
                or _first_in(words, window, end - 1)
                or (window if hard_cut else end)
            )
        while next_start < end_of_text and text[next_start].isspace():
            next_start += 1
        start = next_start


def _check_sizes(chunk_size: int, chunk_overlap: int) -> None:
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not isinstance(chunk_overlap, int) or isinstance(chunk_overlap, bool) or chunk_overlap < 0:
        raise InputError(f"chunk_overlap must be a non-negative integer, got {chunk_overlap!r}")
    if chunk_overlap >= chunk_size:
        raise InputError(
            f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})"
        )


def chunk_documents(
    docs: Iterable[Document],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> list[Document]:
    """Split documents into chunks with ids ``"{file_key or source}#{index}"``.

    Chunk metadata keeps the document's metadata and adds ``source``, ``chunk_index`` and
    ``start_index`` (character offset of the chunk in the document's text).
    """
    _check_sizes(chunk_size, chunk_overlap)
    out: list[Document] = []
    for n, doc in enumerate(docs):
        if not isinstance(doc, Document) or not isinstance(doc.text, str):
            raise InputError(f"docs[{n}] must be a Document with a string text")
        source = str(doc.metadata.get("source") or doc.id or f"doc{n}")
        prefix = str(doc.metadata.get("file_key") or source)
        for index, (offset, piece) in enumerate(split_text(doc.text, chunk_size, chunk_overlap)):
            metadata: dict[str, Any] = {
                **doc.metadata,
                "source": source,
                "chunk_index": index,
                "start_index": offset,
            }
            out.append(Document(text=piece, id=f"{prefix}#{index}", metadata=metadata))
    return out


# -- ingestion ------------------------------------------------------------------------------
@dataclass
class IngestReport:
    """What an ingest run did, file by file (relative paths), and why.

    ``files`` and ``chunks`` count the folder's files now indexed and their chunks;
    ``written`` the chunks embedded by this run and ``removed`` the chunks it deleted.
    """

    files: int
    chunks: int
    removed: int = 0
    sources: list[str] = field(default_factory=list)
    #: ``(relative_path, reason)`` of each file that cannot be ingested (``skip_invalid``)
    refused: list[tuple[str, str]] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    #: files whose content hash matches what is indexed: not embedded again
    unchanged: list[str] = field(default_factory=list)
    #: files gone from the folder whose chunks were removed (``prune=True``)
    pruned: list[str] = field(default_factory=list)
    #: files gone from the folder that are still indexed (``prune=False``)
    gone: list[str] = field(default_factory=list)
    #: ``(file, what happened)`` for files an interrupted run left half-written
    recovered: list[tuple[str, str]] = field(default_factory=list)
    #: ``(folder/, reason)`` for symbolic links to folders, which are not followed
    not_followed: list[tuple[str, str]] = field(default_factory=list)
    written: int = 0
    root: str = ""

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """The refused files (this field's name before unchanged files were skipped)."""
        return self.refused


def _file_version(digest: str, chunk_size: int, chunk_overlap: int) -> str:
    """A file's indexed version: its content hash and the chunking that cut it."""
    return f"{digest[:32]}:{chunk_size}:{chunk_overlap}"


def ingest_folder(
    folder: str | os.PathLike[str],
    store: VectorStore,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    progress: bool = True,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    skip_invalid: bool = False,
    source: str | None = None,
    prune: bool = False,
) -> IngestReport:
    """Make ``store`` mirror ``folder``: a sync, safe to re-run and to kill.

    - Files are filed under ``source`` (default: the folder's absolute path): chunk ids are
      ``"{root}/{relative path}#{index}"``, so a second folder never replaces the first's
      files of the same relative name.
    - A file whose content (and chunking) is unchanged is skipped without embedding; a
      changed file replaces its chunks; ``prune=True`` removes the chunks of files gone from
      the folder (otherwise they are listed in ``IngestReport.gone``).
    - Each file is written all-or-nothing: it is recorded as pending in the collection's
      manifest (:mod:`expertrag.retrieval.manifest`), its chunks are written, then its entry
      is committed. A file a killed run left pending is never served, and this function
      finishes it (the file is still there) or removes its chunks (it is gone).
    - By default one file that cannot be ingested (not UTF-8, binary, empty) refuses the
      whole folder before anything is written, with an :class:`InvalidFilesError` listing
      every such file; ``skip_invalid=True`` ingests the rest and lists them in ``refused``.
    """
    from tqdm.auto import tqdm

    from expertrag.retrieval.manifest import FileEntry

    _check_sizes(chunk_size, chunk_overlap)
    if not callable(getattr(store, "manifest_storage", None)):
        raise InputError(f"store must be an expertrag VectorStore, got {type(store).__name__}")
    if getattr(store, "read_only", False):
        from expertrag.errors import StoreError

        raise StoreError(f"cannot ingest into collection {store.collection_name!r}: it was "
                         "opened read-only (open it with read_only=False)")
    loaded, refused, scan = _load_folder(folder, patterns, skip_invalid, source,
                                         allow_empty=prune)
    root = source_root(scan.root, source)
    report = IngestReport(files=0, chunks=0, refused=refused, root=root,
                          not_followed=list(scan.linked_dirs))
    store.check()  # never write into a damaged database
    storage = store.manifest_storage()
    with storage.lock():
        manifest = store.reload_manifest()
        embedding = str(getattr(store.embedder, "model_name", "") or "")
        if manifest.embedding and embedding and manifest.embedding != embedding \
                and manifest.files:
            raise InputError(
                f"collection {store.collection_name!r} was embedded with "
                f"{manifest.embedding!r}, this run embeds with {embedding!r}: their vectors "
                f"do not compare; pass --embedding-model {manifest.embedding} (Python: "
                "an Embedder of that model), or ingest into another collection")
        manifest.embedding = manifest.embedding if manifest.files else embedding
        if not manifest.exists and store.count():
            report.removed += _drop_legacy_chunks(store, [d.metadata["source"] for d, _ in loaded])
        # 1. files an interrupted run left half-written: remove their chunks
        half_written = sorted(manifest.pending)
        if half_written:
            for key in half_written:
                report.removed += _delete_file_chunks(store, key)
                manifest.files.pop(key, None)
            manifest.pending.clear()
            storage.save(manifest)
        # 2. what changed
        todo: list[tuple[Document, FileEntry, FileEntry | None]] = []
        present = set()
        for doc, digest in loaded:
            key, rel = str(doc.id), str(doc.metadata["source"])
            present.add(key)
            version = _file_version(digest, chunk_size, chunk_overlap)
            old = manifest.files.get(key)
            if old is not None and old.version == version:
                report.unchanged.append(rel)
                continue
            (report.updated if old is not None else report.added).append(rel)
            todo.append((doc, FileEntry(key=key, root=root, source=rel, version=version,
                                        chunks=0, size=len(doc.text)), old))
        for key in half_written:
            fate = ("its chunks were removed and it was ingested again" if key in present
                    else "its chunks were removed (the file is no longer in this folder)")
            name = key.removeprefix(f"{root}/")
            report.recovered.append((name, f"was left half-written by an interrupted ingest: "
                                           f"{fate}"))
        refused_keys = {f"{root}/{name}" for name, _ in refused}
        report.refused = [(name, f"{reason}; its earlier version stays indexed"
                           if f"{root}/{name}" in manifest.files else reason)
                          for name, reason in refused]
        # 3. write, a group of files at a time: pending -> chunks -> committed
        pieces = [(chunk_documents([doc], chunk_size, chunk_overlap), entry, old)
                  for doc, entry, old in todo]
        bar = tqdm(total=sum(len(c) for c, _, _ in pieces), desc="ingesting", unit="chunk",
                   disable=not progress or not pieces, leave=False)
        try:
            for group in _groups(pieces, store.batch_size):
                for chunks, entry, _ in group:
                    entry.chunks = len(chunks)
                    manifest.pending[entry.key] = entry
                storage.save(manifest)
                store.add([c for chunks, _, _ in group for c in chunks])
                bar.update(sum(len(c) for c, _, _ in group))
                stale = [f"{entry.key}#{i}" for _, entry, old in group if old is not None
                         for i in range(entry.chunks, old.chunks)]
                if stale:
                    store.delete(stale)
                    report.removed += len(stale)
                for _, entry, _ in group:
                    manifest.files[entry.key] = manifest.pending.pop(entry.key)
                storage.save(manifest)
                report.written += sum(len(c) for c, _, _ in group)
        finally:
            bar.close()
        # 4. files gone from the folder
        gone = sorted(k for k, e in manifest.files.items()
                      if e.root == root and k not in present and k not in refused_keys)
        for key in gone:
            if prune:
                report.removed += _delete_file_chunks(store, key)
                report.pruned.append(manifest.files.pop(key).source)
            else:
                report.gone.append(manifest.files[key].source)
        if report.pruned:
            storage.save(manifest)
    indexed = [str(d.id) for d, _ in loaded]
    report.sources = [str(d.metadata["source"]) for d, _ in loaded]
    report.files = len(indexed)
    report.chunks = sum(manifest.files[k].chunks for k in indexed if k in manifest.files)
    return report


def _groups(pieces: list[Any], batch: int) -> list[list[Any]]:
    """Files grouped so that each group fills about one store batch."""
    groups: list[list[Any]] = []
    size = 0
    for item in pieces:
        if not groups or size >= batch:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += len(item[0])
    return groups


def _delete_file_chunks(store: VectorStore, key: str) -> int:
    ids = store.ids(where={"file_key": key})
    if ids:
        store.delete(ids)
    return len(ids)


def _drop_legacy_chunks(store: VectorStore, sources: list[str]) -> int:
    """Chunks an earlier expertrag wrote for these relative paths without a root (ids
    ``"{relative path}#{index}"``): the new ids would sit beside them, so they go."""
    ids = []
    for start in range(0, len(sources), 500):
        for doc_id, meta in store.metadata(where={"source": {"$in": sources[start:start + 500]}}):
            if not meta.get("file_key") and "start_index" in meta \
                    and doc_id == f"{meta.get('source')}#{meta.get('chunk_index')}":
                ids.append(doc_id)
    if ids:
        store.delete(ids)
    return len(ids)
