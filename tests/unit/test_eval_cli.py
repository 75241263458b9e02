"""``expertrag eval`` on a user's own data: the documented format, ``--db`` over their
collection, ``--answers`` produced elsewhere, rows without passages refused, and a report
that others can read (0644, labelled bars, a legend clear of them, scales explained)."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass

import pytest
from tiny_models import HashEmbedder

from expertrag import cli
from expertrag.errors import InputError
from expertrag.evaluation import cli as eval_cli
from expertrag.evaluation import runner
from expertrag.evaluation.datasets import QAItem
from expertrag.evaluation.judges import JudgeResult
from expertrag.evaluation.report import SCALES, bar_chart, summarize, write_report
from expertrag.evaluation.robustness import Case, plain_cases
from expertrag.evaluation.runner import GivenAnswer, run_cases, score_answers
from expertrag.ingest import ingest_folder
from expertrag.retrieval import VectorStore
from expertrag.types import Document

QA = [{"id": "fee", "question": "What is the annual fee?", "answer": "45 euros"},
      {"id": "steps", "question": "How many steps does the tower have?", "answer": "117"}]


@dataclass
class Said:
    answer: str
    passages: list


class FirstPassage:
    """Answers with the first retrieved passage, cited: a pipeline over any retriever."""

    def __init__(self, retriever, k: int = 5) -> None:
        self.retriever, self.k = retriever, k

    def answer_many(self, questions):
        search = getattr(self.retriever, "query", None) or self.retriever.retrieve
        out = []
        for q in questions:
            docs = search(q, k=self.k)
            out.append(Said(f"{docs[0].text} [1]" if docs else "I don't know.", docs))
        return out


@pytest.fixture
def no_llm(monkeypatch):
    monkeypatch.setattr(eval_cli, "_llm", lambda args: None)
    monkeypatch.setitem(runner.PIPELINES, "first",
                        lambda llm, retriever, k=5: FirstPassage(retriever, k))


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "unexpected" not in err
    return err


def test_help_documents_the_data_format(capsys):
    with pytest.raises(SystemExit):
        cli.main(["eval", "--help"])
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.strip().startswith('{"question"'))
    row = json.loads(line.strip())  # the example line is valid JSON in the format
    assert {"question", "answer", "gold", "distractors"} <= set(row)
    assert "docs/evaluation.md" in out and "--answers" in out and "--db" in out


def test_missing_file_and_rows_without_passages_are_refused(tmp_path, capsys, no_llm):
    assert cli.main(["eval", "--data", str(tmp_path / "none.jsonl")]) == 2
    assert "evaluation data file" in _error(capsys)
    data = _jsonl(tmp_path / "qa.jsonl", [
        {**QA[0], "gold": ["The annual fee is 45 euros."]}, QA[1]])
    assert cli.main(["eval", "--data", str(data), "--pipelines", "first", "--judges", "",
                     "--out", str(tmp_path / "rep")]) == 2
    err = _error(capsys)
    assert "row 2: no passages" in err and "--db" in err and "--answers" in err
    assert not (tmp_path / "rep").exists()  # refused before anything ran
    # the library refuses passage-less cases too, unless a store retrieves
    item = QAItem("x", "Q?", "A")
    with pytest.raises(InputError, match="no passages"):
        run_cases([Case("plain:x", "plain", item, [])], {"first": lambda llm, r:
                                                         FirstPassage(r)}, None)


def test_eval_over_the_users_own_collection(tmp_path, capsys, no_llm, monkeypatch):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "fees.md").write_text("The annual fee is 45 euros.", encoding="utf-8")
    (corpus / "tower.md").write_text("The tower has 117 steps.", encoding="utf-8")
    db = tmp_path / "db"
    ingest_folder(corpus, VectorStore(path=db, collection="kbase", embedder=HashEmbedder()),
                  progress=False)
    opened = []

    def make_store(path, collection, *, read_only=True, embedding_model=None):
        opened.append((path, collection, read_only))
        return VectorStore(path=path, collection=collection, embedder=HashEmbedder(),
                           read_only=read_only)

    monkeypatch.setattr(eval_cli, "make_store", make_store)
    data = _jsonl(tmp_path / "qa.jsonl", QA)  # no passages: the store retrieves
    out = tmp_path / "rep"
    argv = ["eval", "--data", str(data), "--db", str(db), "--collection", "kbase",
            "--pipelines", "first", "--judges", "", "--k", "1", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    assert opened == [(str(db), "kbase", True)]
    printed = capsys.readouterr().out
    assert "| first | own collection | 2 | 1.000 |" in printed
    assert "The annual fee is 45 euros." in (out / "results.csv").read_text()  # its contexts
    assert any(p.name.startswith("db-") for p in (out / "cache").iterdir())
    for bad, needle in ((["--abilities", "noise"], "only plain"),
                        (["--collection", "nope"], "no collection 'nope'"),
                        (["--answers", str(data)], "exclude each other")):
        assert cli.main([*argv, *bad]) == 2
        assert needle in _error(capsys)
    assert cli.main(["eval", "--data", str(data), "--collection", "kbase"]) == 2
    assert "--collection needs --db" in _error(capsys)


def test_eval_scores_answers_produced_elsewhere(tmp_path, capsys, no_llm):
    data = _jsonl(tmp_path / "qa.jsonl", QA)
    answers = _jsonl(tmp_path / "mine.jsonl", [
        {"id": "fee", "answer": "It is 45 euros [1].", "contexts": ["The fee is 45 euros."]},
        {"question": "How many steps does the tower have?", "answer": "I don't know."}])
    out = tmp_path / "rep"
    assert cli.main(["eval", "--data", str(data), "--answers", str(answers), "--judges", "",
                     "--out", str(out), "--quiet"]) == 0
    assert "| mine | given answers | 2 | 0.500 | 0.500 |" in capsys.readouterr().out
    bad = _jsonl(tmp_path / "bad.jsonl", [{"id": "zzz", "answer": "x"}])
    assert cli.main(["eval", "--data", str(data), "--answers", str(bad), "--judges", ""]) == 2
    assert "row 1: matches no question" in _error(capsys)
    assert cli.main(["eval", "--data", str(data), "--answers", str(tmp_path / "no.jsonl"),
                     "--judges", ""]) == 2
    assert "answers file" in _error(capsys)


def test_score_answers_judges_the_given_contexts():
    seen = []

    class Judge:
        name = "probe"

        def __call__(self, items):
            seen.extend(items)
            return [JudgeResult(0.25, False, "") for _ in items]

    item = QAItem("1", "What is the fee?", "45 euros")
    results = score_answers([Case("a:1", "given", item, [])],
                            [GivenAnswer("45 euros [1].", [Document("The fee is 45 euros.")])],
                            judges=[Judge()])
    assert results[0].correct and results[0].scores["probe"] == 0.25
    assert seen[0].contexts == ["The fee is 45 euros."]
    with pytest.raises(InputError, match="one per case"):
        score_answers([Case("a:1", "given", item, [])], [])


def _results():
    items = [QAItem(str(i), f"Q{i}?", f"A{i}", gold=[Document(f"A{i} is the answer.")],
                    distractors=[Document("Noise.")]) for i in range(3)]
    return run_cases(plain_cases(items), {
        "first": lambda llm, r: FirstPassage(r), "second": lambda llm, r: FirstPassage(r, 2)},
        llm=None, progress=False)


def test_report_files_are_readable_by_others(tmp_path):
    written = write_report(_results(), tmp_path / "rep")
    for path in written.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    cached = runner.ResultCache(tmp_path / "cache")
    cached.put(_results()[0])
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in (tmp_path / "cache").iterdir())


def test_report_explains_the_scales(tmp_path):
    results = _results()
    for r in results:
        r.scores["answer_relevance"] = 0.2
    written = write_report(results, tmp_path / "rep")
    md = written["report.md"].read_text()
    assert "## How to read the scores" in md and "0.19" in md and "not a probability" in md
    html = written["report.html"].read_text()
    assert "How to read the scores" in html and "<dt>answer_relevance</dt>" in html
    assert set(SCALES) >= {"accuracy", "faithfulness", "context_relevance", "answer_relevance"}


def test_bars_carry_values_and_the_legend_covers_none():
    rows = summarize(_results())
    rows[0]["accuracy"] = 1.0  # a full-height bar: where a legend inside would sit
    fig = bar_chart(rows, "accuracy")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    bars = list(ax.patches)
    assert len(bars) == 2
    labels = [t.get_text() for t in ax.texts]
    assert sorted(labels) == sorted(f"{r['accuracy']:.2f}" for r in rows)
    legend = ax.get_legend().get_window_extent(renderer)
    for bar in bars:
        assert not legend.overlaps(bar.get_window_extent(renderer))
    for text in ax.texts:  # value labels stay inside the axes, above their bars
        assert ax.get_window_extent(renderer).contains(*text.get_window_extent(renderer).p1)
    judged = bar_chart([{**r, "answer_relevance": 0.3} for r in rows], "answer_relevance")
    assert any("pass mark 0.19" in t.get_text() for t in judged.axes[0].get_legend().texts)
