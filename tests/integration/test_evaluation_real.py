"""Evaluation with the real judge: the shipped critic and relevance experts, RAGAS through
the local SmolLM2 (no NaN, no OpenAI), ``expertrag eval`` end to end, and cookbook 06."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm() -> Any:
    from expertrag.experts import attach_shipped
    from expertrag.models import ExpertLLM

    model = ExpertLLM.shared()
    attach_shipped(model)
    return model


def test_judges_tell_supported_from_unsupported(llm: Any) -> None:
    from expertrag.evaluation.judges import ContextRelevanceJudge, EvalItem, FaithfulnessJudge

    context = ["The Saltmere Head lighthouse was built in 1862 on the northern cliffs."]
    good, bad = FaithfulnessJudge(llm)([
        EvalItem("When was the lighthouse built?", "It was built in 1862.", context),
        EvalItem("When was the lighthouse built?", "It was built in 1975 by monks.", context)])
    assert good.score > bad.score
    rel = ContextRelevanceJudge(llm)([EvalItem("When was the lighthouse built?", "", [
        context[0], "Bread is baked from flour, water, salt and yeast."])])[0]
    assert rel.parts[0] > rel.parts[1]


def test_ragas_faithfulness_with_the_local_judge_is_a_number(llm: Any, monkeypatch) -> None:
    pytest.importorskip("ragas")
    from expertrag.evaluation.ragas_backend import ExpertRagasLLM, no_openai, ragas_metric

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with no_openai():
        metric = ragas_metric("Faithfulness", llm=ExpertRagasLLM(llm, max_new_tokens=96))
        value = metric.score(user_input="When was the lighthouse built?",
                             response="The lighthouse was built in 1862.",
                             retrieved_contexts=["The lighthouse was built in 1862."]).value
    assert not math.isnan(value) and 0.0 <= value <= 1.0


def test_eval_command_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "items.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"question": "When was the Saltmere Head lighthouse built?", "answer": "1862",
         "gold": ["The Saltmere Head lighthouse was built in 1862."],
         "distractors": ["Bread is baked from flour.", "Dogs bark.", "Cats sleep."]},
        {"question": "When is Lantern Night held?", "answer": "third Saturday of August",
         "gold": ["Lantern Night is held on the third Saturday of August."],
         "distractors": ["The foghorn sounds twice.", "Fees are due in January."]},
    ]) + "\n")
    out = tmp_path / "report"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "expertrag.cli", "eval", "--data", str(data), "--pipelines",
           "naive,crag", "--abilities", "plain,negative", "--out", str(out), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| naive | plain |" in proc.stdout and "| crag | negative rejection |" in proc.stdout
    html = (out / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html
    # a second run resumes from the cache
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and again.stdout.split("report:")[0] == \
        proc.stdout.split("report:")[0]


def test_evaluation_cookbook_runs(run_cookbook) -> None:
    pytest.importorskip("llama_index.core")
    out = run_cookbook("06_evaluation.py")
    assert out.count("LangChain: ") == 3 and "LlamaIndex faithfulness:" in out
    assert "| naive | noise 0.0 |" in out and "report:" in out
