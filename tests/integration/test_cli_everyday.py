"""The command line as a user runs it (a subprocess, the embedded SmolLM2-135M and
all-MiniLM-L6-v2): one test per path of issue 41 - ingest as a sync, a read-only ask with
per-question results, eval over the user's own collection and over answers they have, and
the demo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "ANONYMIZED_TELEMETRY": "False"}


def run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "expertrag.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kb")
    a, b = root / "handbook", root / "club"
    (a / "fees").mkdir(parents=True)
    b.mkdir()
    (a / "notes.md").write_text("The Saltmere Head lighthouse was built in 1862 on the "
                                "northern cliffs.", encoding="utf-8")
    (a / "fees" / "annual.md").write_text("The annual membership fee is 45 euros.",
                                          encoding="utf-8")
    (b / "notes.md").write_text("Lantern Night is held on the third Saturday of August.",
                                encoding="utf-8")
    (b / "scan.txt").write_bytes(b"\x00" * 128)
    db = root / "db"
    for folder in (a, b):
        proc = run("ingest", str(folder), "--db", str(db), "--quiet", "--skip-invalid")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return {"root": root, "handbook": a, "club": b, "db": db}


def test_ingest_is_a_sync(kb) -> None:
    db = str(kb["db"])
    again = run("ingest", str(kb["handbook"]), "--db", db, "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 added, 0 updated, 2 skipped (unchanged), 0 pruned, 0 refused; 0 chunks " \
           "embedded" in again.stdout
    (kb["handbook"] / "fees" / "annual.md").unlink()
    pruned = run("ingest", str(kb["handbook"]), "--db", db, "--quiet", "--prune")
    assert "1 pruned" in pruned.stdout and "fees/annual.md" in pruned.stdout
    (kb["handbook"] / "fees" / "annual.md").write_text(
        "The annual membership fee is 45 euros.", encoding="utf-8")
    back = run("ingest", str(kb["handbook"]), "--db", db, "--quiet")
    assert "1 added" in back.stdout
    strict = run("ingest", str(kb["club"]), "--db", db, "--quiet")
    assert strict.returncode == 2 and strict.stderr.startswith("error: 1 of 2 files")
    assert "scan.txt holds NUL bytes" in strict.stderr
    manifest = json.loads((kb["db"] / "expertrag-manifest.expertrag.json").read_text())
    assert manifest["embedding"] == "all-minilm-l6-v2" and not manifest["pending"]
    sources = sorted(e["source"] for e in manifest["files"].values())
    assert sources == ["fees/annual.md", "notes.md", "notes.md"]  # both notes.md kept


def test_ask_is_read_only_and_answers_each_question(kb) -> None:
    db = str(kb["db"])
    before = sorted(p.name for p in kb["db"].iterdir())
    proc = run("ask", "When was the Saltmere Head lighthouse built?", "",
               "When is Lantern Night held?", "--db", db, "--json", "--quiet")
    assert proc.returncode == 2  # one question failed...
    data = json.loads(proc.stdout)  # ...and the JSON is whole, one entry per question
    assert [d["number"] for d in data] == [1, 2, 3]
    assert "1862" in data[0]["answer"] and data[0]["expert"] == "grounded-qa"
    assert data[1]["error"]["message"] == "question 2 is empty"
    assert "August" in data[2]["answer"]
    assert "Loading weights" not in proc.stderr  # --quiet silences the loaders
    assert "Warning" not in proc.stderr  # ...without a warning about switching them back
    roots = {c["root"] for d in (data[0], data[2]) for c in d["citations"]}
    assert roots <= {kb["handbook"].resolve().as_posix(), kb["club"].resolve().as_posix()}
    typo = run("ask", "fee?", "--db", db, "--collection", "expertrgg")
    assert typo.returncode == 2 and typo.stderr.startswith("error: no collection 'expertrgg'")
    empty = kb["root"] / "emptydir"
    empty.mkdir()
    nodb = run("ask", "fee?", "--db", str(empty))
    assert nodb.returncode == 2 and nodb.stderr.count("\n") == 1
    assert list(empty.iterdir()) == [] and sorted(p.name for p in kb["db"].iterdir()) == before


def test_eval_over_the_users_collection_and_given_answers(kb) -> None:
    data = kb["root"] / "questions.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"id": "built", "question": "When was the Saltmere Head lighthouse built?",
         "answer": "1862"},
        {"id": "fee", "question": "What is the annual membership fee?", "answer": "45 euros"},
    ]) + "\n")
    out = kb["root"] / "report"
    proc = run("eval", "--data", str(data), "--db", str(kb["db"]), "--pipelines", "naive",
               "--judges", "answer_relevance", "--k", "2", "--out", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| naive | own collection | 2 |" in proc.stdout
    assert "How to read the scores" in (out / "report.md").read_text()
    assert oct((out / "report.html").stat().st_mode & 0o777) == "0o644"
    refused = run("eval", "--data", str(data), "--out", str(out))
    assert refused.returncode == 2 and "row 1: no passages" in refused.stderr
    answers = kb["root"] / "mine.jsonl"
    answers.write_text("\n".join(json.dumps(r) for r in [
        {"id": "built", "answer": "It was built in 1862 [1].",
         "contexts": ["The Saltmere Head lighthouse was built in 1862."]},
        {"id": "fee", "answer": "I don't know."}]) + "\n")
    given = run("eval", "--data", str(data), "--answers", str(answers), "--judges",
                "faithfulness,answer_relevance", "--out", str(kb["root"] / "given"), "--quiet")
    assert given.returncode == 0, given.stderr[-3000:]
    assert "| mine | given answers | 2 | 0.500 | 0.500 |" in given.stdout


def test_demo_answers_with_one_result_per_question(tmp_path) -> None:
    proc = run("demo", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert len(data) == 5 and all(d["error"] is None for d in data)
    assert all(c["root"] == "sample_corpus" for d in data for c in d["citations"])
