"""The robustness suite, the evaluation runner (cache, resume, per-item errors), the report
files and ``expertrag eval``, with fake pipelines and judges."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from expertrag.errors import InputError
from expertrag.evaluation.datasets import QAItem, load_eval_items
from expertrag.evaluation.judges import JudgeResult
from expertrag.evaluation.report import summarize, write_report
from expertrag.evaluation.robustness import (
    counterfactual_cases,
    integration_cases,
    negative_cases,
    noise_cases,
    plain_cases,
    robustness_cases,
)
from expertrag.evaluation.runner import CaseRetriever, ResultCache, run_cases
from expertrag.types import Document


def items(n: int = 6) -> list[QAItem]:
    out = []
    for i in range(n):
        gold = [Document(f"Gold one of item {i} says the answer is Answer{i}.", id=f"{i}:g0"),
                Document(f"Gold two of item {i} links the bridge.", id=f"{i}:g1")]
        noise = [Document(f"Noise {j} of item {i}.", id=f"{i}:n{j}") for j in range(8)]
        out.append(QAItem(id=str(i), question=f"What is item {i}?", answer=f"Answer{i}",
                          gold=gold, distractors=noise))
    return out


# ------------------------------------------------------------------------------ suite
def test_noise_ratios_give_the_right_share_of_distractors():
    cases = noise_cases(items(2))
    by_ratio = {}
    for c in cases:
        by_ratio.setdefault(c.meta["ratio"], []).append(c)
    assert sorted(by_ratio) == [0.0, 0.2, 0.4, 0.6, 0.8]
    for ratio, cs in by_ratio.items():
        for c in cs:
            noise = sum(d.id.split(":")[1].startswith("n") for d in c.passages)
            assert all(g in c.passages for g in c.item.gold)
            assert abs(noise / len(c.passages) - ratio) <= 0.2
    assert len({c.key for c in cases}) == len(cases)
    with pytest.raises(InputError, match="noise ratios"):
        noise_cases(items(1), ratios=[1.0])


def test_negative_counterfactual_and_integration_cases():
    neg = negative_cases(items(3))
    assert all(not c.answerable and not any(":g" in d.id for d in c.passages) for c in neg)
    cf = counterfactual_cases(items(3))
    for c in cf:
        text = " ".join(d.text for d in c.passages)
        assert c.item.answer not in text and c.counterfactual in text
    integ = integration_cases(items(2))
    assert [c.condition for c in integ].count("integration") == 2
    singles = [c for c in integ if c.condition == "single passage"]
    assert len(singles) == 4 and all(len(c.passages) == 1 for c in singles)
    plain = plain_cases(items(2))
    assert all(len(c.passages) == 5 for c in plain)
    assert {c.condition for c in robustness_cases(items(2))} >= {"plain", "noise 0.4",
                                                                 "negative rejection"}
    with pytest.raises(InputError, match="unknown abilities"):
        robustness_cases(items(1), ["telepathy"])


# ------------------------------------------------------------------------------ runner
@dataclass
class Ans:
    answer: str


class Echo:
    """Answers with the answer of the first passage that names one, else refuses."""

    def __init__(self, retriever, fail_on: str | None = None):
        self.retriever, self.fail_on, self.batches = retriever, fail_on, []

    def answer_many(self, questions):
        self.batches.append(len(questions))
        out = []
        for q in questions:
            if self.fail_on and self.fail_on in q:
                raise RuntimeError("boom")
            texts = [d.text for d in self.retriever.retrieve(q, 5)]
            hit = next((t.split("answer is ")[1].rstrip(".") for t in texts
                        if "answer is " in t), None)
            out.append(Ans(f"{hit} [1]." if hit else "I don't know."))
        return out


class CountJudge:
    name = "fake_judge"

    def __init__(self):
        self.seen = 0

    def __call__(self, batch):
        self.seen += len(batch)
        return [JudgeResult(0.5, True, "ok") for _ in batch]


def test_runner_scores_caches_and_resumes(tmp_path):
    cases = robustness_cases(items(4), ["plain", "negative", "counterfactual"])
    built = []

    def factory(llm, retriever):
        built.append(Echo(retriever))
        return built[-1]

    judge = CountJudge()
    cache = ResultCache(tmp_path / "cache")
    results = run_cases(cases, {"echo": factory}, llm=None, cache=cache, judges=[judge],
                        progress=False)
    assert len(results) == len(cases) and judge.seen == len(cases)
    rows = {r["condition"]: r for r in summarize(results)}
    assert rows["plain"]["accuracy"] == 1.0
    assert rows["negative rejection"]["accuracy"] == 1.0  # refused: right
    assert rows["counterfactual"]["follows_counterfactual"] == 1.0
    assert all(r.scores["fake_judge"] == 0.5 for r in results)
    # a second run reads everything from the cache: no pipeline is asked again
    again = CountJudge()
    built.clear()
    assert run_cases(cases, {"echo": factory}, llm=None, cache=cache, judges=[again],
                     progress=False) == results
    assert again.seen == 0 and not any(e.batches for e in built)


def test_runner_records_an_item_that_raises_and_goes_on():
    cases = plain_cases(items(3))
    results = run_cases(cases, {"flaky": lambda llm, r: Echo(r, fail_on="item 1")}, llm=None,
                        progress=False)
    errors = [r for r in results if r.error]
    assert len(errors) == 1 and "RuntimeError: boom" in errors[0].error
    assert sum(r.correct for r in results) == 2
    assert summarize(results)[0]["errors"] == 1


def test_case_retriever_routes_by_question():
    cases = plain_cases(items(2))
    retriever = CaseRetriever(cases)
    assert retriever.retrieve(cases[1].question, 2) == cases[1].passages[:2]
    assert retriever.query("something else") == []


def test_report_files(tmp_path):
    cases = robustness_cases(items(3), ["noise", "negative"])
    results = run_cases(cases, {"echo": lambda llm, r: Echo(r)}, llm=None, progress=False)
    written = write_report(results, tmp_path / "report", extra_tables={"note": "hello"})
    assert {"report.md", "summary.csv", "results.csv", "report.html", "noise_curve.png",
            "plot_accuracy.png"} <= set(written)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "hello" in html
    assert (tmp_path / "report" / "noise_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "| echo | noise 0.0 |" in (tmp_path / "report" / "report.md").read_text()


# ------------------------------------------------------------------------------ data files
def test_eval_items_from_jsonl_and_typed_errors(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "question": "Q1?", "answer": "A1", "gold": ["g1"], "distractors": ["d1"]},
        {"question": "Q2?", "answer": "A2", "aliases": ["a2"],
         "gold": [{"text": "g2", "id": "x"}]}]) + "\n")
    got = load_eval_items(path)
    assert [i.id for i in got] == ["a", "2"] and got[1].gold[0].id == "x"
    assert got[1].answers == ["A2", "a2"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"question": "Q?", "answer": "A"}) + "\n{oops\n")
    with pytest.raises(Exception, match="row 2"):
        load_eval_items(bad)
    bad.write_text(json.dumps({"question": "Q?", "answer": ""}) + "\n")
    with pytest.raises(Exception, match="answer"):
        load_eval_items(bad)
    musique = tmp_path / "m.json"
    musique.write_text(json.dumps([{"id": "m1", "question": "Q?", "answer": "A",
                                    "paragraphs": [{"paragraph_text": "p", "is_supporting":
                                                    True, "title": "T"}]}]))
    assert load_eval_items(musique)[0].gold[0].text == "p"


def test_eval_command_with_fakes(tmp_path, monkeypatch, capsys):
    from expertrag import cli
    from expertrag.evaluation import runner

    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(json.dumps({
        "question": it.question, "answer": it.answer, "gold": [d.text for d in it.gold],
        "distractors": [d.text for d in it.distractors]}) for it in items(3)) + "\n")
    monkeypatch.setitem(runner.PIPELINES, "echo", lambda llm, r: Echo(r))

    class NoLLM:
        @staticmethod
        def from_pretrained(model):
            return object()

    monkeypatch.setattr("expertrag.models.llm.ExpertLLM", NoLLM)
    monkeypatch.setattr("expertrag.experts.attach_shipped", lambda llm: [])
    out = tmp_path / "rep"
    assert cli.main(["eval", "--data", str(path), "--pipelines", "echo", "--judges", "",
                     "--abilities", "plain,negative", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| echo | plain |" in printed and "report:" in printed
    assert (out / "report.html").is_file() and any((out / "cache").iterdir())
    assert cli.main(["eval", "--data", str(path), "--pipelines", "nope", "--out",
                     str(out)]) == 2
    assert "unknown pipelines" in capsys.readouterr().err


def test_html_report_renders_in_headless_chromium(tmp_path):
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium)")
    cases = robustness_cases(items(2), ["noise"])
    results = run_cases(cases, {"echo": lambda llm, r: Echo(r)}, llm=None, progress=False)
    written = write_report(results, tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'prof'}",
                    "--window-size=1100,900", f"--screenshot={shot}",
                    written["report.html"].as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000  # a real page, not a blank one
    from PIL import Image

    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((64, 64)).getcolors(64 * 64)
    assert colours is not None and len(colours) > 20  # text, table rules and plots drawn
