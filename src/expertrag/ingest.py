"""Load text files, split them into overlapping chunks, and ingest them into a vector store.

The splitter works on character counts and prefers, in order, paragraph, sentence and word
boundaries; chunk ids are deterministic (``"{relative_path}#{index}"``) so re-ingesting a
folder upserts the same ids instead of duplicating them.
"""

from __future__ import annotations

import bisect
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
def _is_hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def _read(path: Path) -> tuple[str | None, str | None]:
    """``(text, None)``, or ``(None, reason)`` when the file cannot be ingested."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return None, f"is not valid UTF-8 text (byte {exc.start}): convert it to UTF-8"
    if not text.strip():
        return None, "is empty"
    return text, None


def read_text_file(path: str | os.PathLike[str]) -> str:
    """Read a UTF-8 text file; an empty or undecodable file raises :class:`InputError`."""
    path = Path(path)
    text, reason = _read(path)
    if text is None:
        raise InputError(f"{path} {reason}")
    return text


def load_folder(
    folder: str | os.PathLike[str], patterns: Sequence[str] = DEFAULT_PATTERNS,
    skip_invalid: bool = False,
) -> list[Document]:
    """Load every file under ``folder`` (recursively) matching ``patterns``, sorted by path.

    Each document's id and ``metadata["source"]`` are its path relative to ``folder`` (POSIX
    style); ``metadata["path"]`` is the absolute path. Hidden files and folders are skipped.
    Files that are not UTF-8, empty or unreadable raise one :class:`InvalidFilesError`
    listing all of them; with ``skip_invalid`` they are left out instead.
    """
    return _load_folder(folder, patterns, skip_invalid)[0]


def _load_folder(
    folder: str | os.PathLike[str], patterns: Sequence[str], skip_invalid: bool
) -> tuple[list[Document], list[tuple[str, str]]]:
    if isinstance(patterns, str):
        patterns = (patterns,)
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root} is not a folder")
    found: set[Path] = set()
    for pattern in patterns:
        for path in root.rglob(pattern):
            if path.is_file() and not _is_hidden(path.relative_to(root)):
                found.add(path)
    if not found:
        raise InputError(f"no files matching {', '.join(patterns)} in {root}")
    docs = []
    problems: list[tuple[str, str]] = []
    for path in sorted(found, key=lambda p: p.relative_to(root).as_posix()):
        relative = path.relative_to(root).as_posix()
        text, reason = _read(path)
        if text is None:
            problems.append((relative, reason or "cannot be ingested"))
            continue
        docs.append(
            Document(
                text=text,
                id=relative,
                metadata={"source": relative, "path": str(path.resolve())},
            )
        )
    if problems and (not skip_invalid or not docs):
        listing = "\n".join(f"  {name} {reason}" for name, reason in problems)
        hint = ("fix or remove them, or pass skip_invalid (--skip-invalid) to ingest the rest"
                if docs else "no file in the folder can be ingested")
        raise InvalidFilesError(
            f"{len(problems)} of {len(found)} files in {root} cannot be ingested ({hint}):\n"
            f"{listing}", problems)
    return docs, problems


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
    """Split documents into chunks with ids ``"{source}#{index}"``.

    Chunk metadata keeps the document's metadata and adds ``source``, ``chunk_index`` and
    ``start_index`` (character offset of the chunk in the document's text).
    """
    _check_sizes(chunk_size, chunk_overlap)
    out: list[Document] = []
    for n, doc in enumerate(docs):
        if not isinstance(doc, Document) or not isinstance(doc.text, str):
            raise InputError(f"docs[{n}] must be a Document with a string text")
        source = str(doc.metadata.get("source") or doc.id or f"doc{n}")
        for index, (offset, piece) in enumerate(split_text(doc.text, chunk_size, chunk_overlap)):
            metadata: dict[str, Any] = {
                **doc.metadata,
                "source": source,
                "chunk_index": index,
                "start_index": offset,
            }
            out.append(Document(text=piece, id=f"{source}#{index}", metadata=metadata))
    return out


# -- ingestion ------------------------------------------------------------------------------
@dataclass
class IngestReport:
    """What an ingest run did: files read, chunks written, stale chunks removed."""

    files: int
    chunks: int
    removed: int = 0
    sources: list[str] = field(default_factory=list)
    #: ``(relative_path, reason)`` of each file left out (``skip_invalid=True``)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def ingest_folder(
    folder: str | os.PathLike[str],
    store: VectorStore,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
    progress: bool = True,
    patterns: Sequence[str] = DEFAULT_PATTERNS,
    skip_invalid: bool = False,
) -> IngestReport:
    """Load, chunk and upsert a folder into ``store``; safe to re-run on the same folder.

    Chunks left over from an earlier, longer version of a file are deleted, so the store mirrors
    the folder's current content for every file it ingests. By default one file that cannot
    be read (not UTF-8, empty) refuses the whole folder, before anything is written, with an
    :class:`InvalidFilesError` that lists every such file; ``skip_invalid=True`` ingests the
    rest and reports the skipped files in ``IngestReport.skipped``.
    """
    from tqdm.auto import tqdm

    docs, skipped = _load_folder(folder, patterns, skip_invalid)
    chunks = chunk_documents(docs, chunk_size, chunk_overlap)
    batch = max(1, int(getattr(store, "batch_size", 64)))
    with tqdm(
        total=len(chunks), desc="ingesting", unit="chunk", disable=not progress, leave=False
    ) as bar:
        for i in range(0, len(chunks), batch):
            part = chunks[i : i + batch]
            store.add(part)
            bar.update(len(part))
    fresh = {c.id for c in chunks}
    removed = 0
    sources = [str(d.metadata["source"]) for d in docs]
    for source in sources:
        stale = [i for i in store.ids(where={"source": source}) if i not in fresh]
        if stale:
            store.delete(stale)
            removed += len(stale)
    return IngestReport(files=len(docs), chunks=len(chunks), removed=removed, sources=sources,
                        skipped=skipped)
