"""Loading, chunking and ingesting folders."""

from __future__ import annotations

import hashlib
import random
import re

import pytest

from expertrag.errors import InputError, InvalidFilesError
from expertrag.ingest import (
    IngestReport,
    chunk_documents,
    ingest_folder,
    load_folder,
    split_text,
)
from expertrag.retrieval import VectorStore
from expertrag.types import Document


class HashEmbedder:
    """Hashed bag of words; enough to exercise the store without a model."""

    def _vec(self, text: str) -> list[float]:
        v = [0.0] * 32
        for word in re.findall(r"\w+", text.lower()):
            v[int(hashlib.md5(word.encode()).hexdigest(), 16) % 32] += 1.0
        v[0] += 1e-3
        return v

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [self._vec(t) for t in texts]

    def embed_query(self, text: str) -> list[float]:
        return self._vec(text)


def _write(path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


# -- load_folder ----------------------------------------------------------------------------
def test_load_folder_recursive_sorted_with_relative_ids(tmp_path):
    _write(tmp_path / "b.md", "# B\n\nbee")
    _write(tmp_path / "sub" / "a.txt", "aye")
    _write(tmp_path / "skip.rst", "not matched")
    _write(tmp_path / ".hidden" / "h.md", "hidden")
    docs = load_folder(tmp_path)
    root = tmp_path.resolve().as_posix()
    assert [d.id for d in docs] == [f"{root}/b.md", f"{root}/sub/a.txt"]
    assert docs[1].metadata["source"] == "sub/a.txt"
    assert docs[1].metadata["root"] == root
    assert docs[1].metadata["path"].endswith("a.txt")
    assert [d.id for d in load_folder(tmp_path, patterns=("*.txt",), source="kb")] == [
        "kb/sub/a.txt"]


def test_bom_is_stripped(tmp_path):
    _write(tmp_path / "bom.txt", "\ufeffhello".encode())
    assert load_folder(tmp_path)[0].text == "hello"


@pytest.mark.parametrize(
    ("content", "message"),
    [("", "empty"), ("  \n\t ", "empty"), (b"caf\xe9 \xff\xfe", "not valid UTF-8")],
)
def test_bad_file_names_the_file(tmp_path, content, message):
    _write(tmp_path / "good.md", "fine")
    _write(tmp_path / "bad file.txt", content)
    with pytest.raises(InputError, match=message) as info:
        load_folder(tmp_path)
    assert "bad file.txt" in str(info.value)


def test_every_bad_file_is_reported_at_once(tmp_path):
    _write(tmp_path / "good.md", "fine")
    _write(tmp_path / "a.txt", b"\xff\xfe")
    _write(tmp_path / "z" / "b.md", "")
    with pytest.raises(InvalidFilesError) as info:
        load_folder(tmp_path)
    assert info.value.problems == [
        ("a.txt", "is not valid UTF-8 text (byte 0): convert it to UTF-8"),
        ("z/b.md", "is empty"),
    ]
    assert "2 of 3 files" in str(info.value) and "skip_invalid" in str(info.value)
    assert [d.metadata["source"] for d in load_folder(tmp_path, skip_invalid=True)] == [
        "good.md"]


def test_skip_invalid_ingests_the_rest_and_reports_the_skipped(tmp_path):
    folder = tmp_path / "docs"
    _write(folder / "good.md", "The annual fee is 45 euros.")
    _write(folder / "bad.txt", "caf\xe9".encode("latin-1"))
    store = VectorStore(path=tmp_path / "db", embedder=HashEmbedder())
    with pytest.raises(InvalidFilesError, match=r"bad\.txt"):
        ingest_folder(folder, store, progress=False)
    assert store.count() == 0  # strict by default: nothing written
    report = ingest_folder(folder, store, progress=False, skip_invalid=True)
    assert (report.files, report.sources) == (1, ["good.md"])
    assert report.skipped == [("bad.txt", "is not valid UTF-8 text (byte 3): "
                                          "convert it to UTF-8")]
    assert store.count() == report.chunks


def test_skip_invalid_with_no_valid_file_is_still_an_error(tmp_path):
    _write(tmp_path / "bad.txt", b"\xff")
    with pytest.raises(InvalidFilesError, match="no file in the folder can be ingested"):
        load_folder(tmp_path, skip_invalid=True)


def test_folder_without_matching_files(tmp_path):
    _write(tmp_path / "x.rst", "text")
    with pytest.raises(InputError, match=r"no files matching \*\.txt, \*\.md"):
        load_folder(tmp_path)
    with pytest.raises(InputError, match="not a folder"):
        load_folder(tmp_path / "missing")


# -- split_text -----------------------------------------------------------------------------
def _check_invariants(text: str, chunks, size: int, overlap: int) -> None:
    covered = [False] * len(text)
    prev = None
    for start, piece in chunks:
        assert piece and piece == piece.strip()
        assert len(piece) <= size
        assert text[start : start + len(piece)] == piece  # offsets are exact
        if prev is not None:
            prev_start, prev_piece = prev
            prev_end = prev_start + len(prev_piece)
            assert start > prev_start  # progress
            assert prev_end - start <= overlap  # overlap bounded
            assert start + len(piece) > prev_end  # every chunk adds new text
        for i in range(start, start + len(piece)):
            covered[i] = True
        prev = (start, piece)
    assert all(c or text[i].isspace() for i, c in enumerate(covered))  # nothing lost


def _random_text(rng: random.Random) -> str:
    words = ["light", "keeper", "lens", "x" * 45, "Dr.", "e.g.", "a\nb", "  ", "\n\n"]
    paras = []
    for _ in range(rng.randint(1, 8)):
        sentences = [
            " ".join(rng.choice(words) for _ in range(rng.randint(1, 15))) + rng.choice(".!?")
            for _ in range(rng.randint(1, 6))
        ]
        paras.append(" ".join(sentences))
    return rng.choice(["# Title\n\n", "  ", ""]) + "\n\n".join(paras)


@pytest.mark.parametrize(("size", "overlap"), [(800, 100), (120, 30), (40, 10), (25, 24), (5, 0)])
def test_split_invariants_on_random_text(size, overlap):
    rng = random.Random(size * 1000 + overlap)
    for _ in range(60):
        text = _random_text(rng)
        _check_invariants(text, split_text(text, size, overlap), size, overlap)


def test_short_text_is_one_chunk_and_blank_is_none():
    assert split_text("  Hello world.  ", 100, 10) == [(2, "Hello world.")]
    assert split_text(" \n\n ", 100, 10) == []


def test_paragraph_boundaries_are_preferred():
    p1 = "First paragraph sentence one. Sentence two is here."
    p2 = "Second paragraph has a rather longer sentence in it. And one more."
    text = f"{p1}\n\n{p2}"
    chunks = split_text(text, len(p1) + 20, 0)
    assert chunks[0] == (0, p1)
    assert chunks[1][1] == p2[: len(chunks[1][1])]


def test_heading_stays_with_its_paragraph():
    text = "# Fees\n\n" + "The fee is 45 euros. " * 10
    first = split_text(text, 100, 0)[0][1]
    assert first.startswith("# Fees\n\nThe fee is 45 euros.")


def test_sentence_then_word_boundaries():
    text = "One two three four five. Six seven eight nine ten eleven twelve."
    chunks = split_text(text, 30, 0)
    assert chunks[0][1] == "One two three four five."
    assert all(not c.endswith(("elev", "twel")) for _, c in chunks)
    words = split_text("alpha beta gamma delta epsilon zeta", 12, 0)
    assert [c for _, c in words] == ["alpha beta", "gamma delta", "epsilon zeta"]


def test_overlap_starts_at_sentence_boundary():
    text = "Aaa aaa aaa. Bbb bbb bbb. Ccc ccc ccc. Ddd ddd ddd. Eee eee eee."
    chunks = split_text(text, 40, 15)
    assert chunks[0][1] == "Aaa aaa aaa. Bbb bbb bbb. Ccc ccc ccc."
    assert chunks[1][1].startswith("Ccc ccc ccc.")  # the last sentence is repeated


def test_hard_cut_overlaps_by_characters():
    assert split_text("a" * 25, 10, 3) == [
        (0, "a" * 10),
        (7, "a" * 10),
        (14, "a" * 10),
        (21, "aaaa"),
    ]


def test_split_is_deterministic():
    text = _random_text(random.Random(7))
    assert split_text(text, 60, 20) == split_text(text, 60, 20)


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (10, 10), (10, -1), (10.5, 1)])
def test_bad_sizes(size, overlap):
    with pytest.raises(InputError):
        split_text("text", size, overlap)


# -- chunk_documents ------------------------------------------------------------------------
def test_chunk_documents_ids_and_metadata():
    doc = Document("Para one here.\n\nPara two here.", id="x.md", metadata={"source": "d/x.md"})
    chunks = chunk_documents([doc], chunk_size=16, chunk_overlap=0)
    assert [c.id for c in chunks] == ["d/x.md#0", "d/x.md#1"]
    assert chunks[1].metadata == {"source": "d/x.md", "chunk_index": 1, "start_index": 16}
    assert chunks[1].text == "Para two here."
    assert chunk_documents([doc], 16, 0) == chunks
    # without a source, the id (or position) names the chunks
    assert chunk_documents([Document("t", id="plain")])[0].id == "plain#0"
    assert chunk_documents([Document("t")])[0].id == "doc0#0"


# -- ingest_folder --------------------------------------------------------------------------
def test_ingest_folder_is_idempotent_and_drops_stale_chunks(tmp_path):
    corpus = tmp_path / "corpus"
    long_text = "\n\n".join(f"Paragraph {i} talks about topic {i}." for i in range(20))
    _write(corpus / "long.md", long_text)
    _write(corpus / "short.txt", "Just one line.")
    store = VectorStore(path=tmp_path / "db", embedder=HashEmbedder())

    report = ingest_folder(corpus, store, chunk_size=100, chunk_overlap=20, progress=False)
    assert isinstance(report, IngestReport)
    assert report.files == 2
    assert report.chunks == store.count() > 2
    again = ingest_folder(corpus, store, chunk_size=100, chunk_overlap=20, progress=False)
    assert (again.chunks, again.removed) == (report.chunks, 0)
    assert store.count() == report.chunks

    _write(corpus / "long.md", "Now a short file.")
    shrunk = ingest_folder(corpus, store, chunk_size=100, chunk_overlap=20, progress=False)
    assert shrunk.chunks == 2
    assert shrunk.removed == report.chunks - 2
    root = corpus.resolve().as_posix()
    assert sorted(store.ids()) == [f"{root}/long.md#0", f"{root}/short.txt#0"]
    hit = store.query("short file", k=1)[0]
    assert hit.metadata["source"] == "long.md"
    assert hit.metadata["chunk_index"] == 0
