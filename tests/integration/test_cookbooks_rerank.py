"""Runs cookbooks/02_rerankers.py end to end (real SmolLM2 and all-MiniLM-L6-v2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COOKBOOK = Path(__file__).resolve().parents[2] / "cookbooks" / "02_rerankers.py"


def test_rerankers_cookbook_runs() -> None:
    pytest.importorskip("langchain_classic")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(COOKBOOK)], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "after the LLM reranker" in out
    # the relevance expert puts the passage that answers the question first
    after = out.split("after the LLM reranker", 1)[1].splitlines()
    assert "Visitors may climb the tower on Saturdays" in after[1]
    assert "LangChain answer:" in out and "LlamaIndex answer:" in out
    assert out.count("source p=") == 2
