"""Runs cookbooks/02_rerankers.py end to end (real SmolLM2 and all-MiniLM-L6-v2)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration


def test_rerankers_cookbook_runs(run_cookbook) -> None:
    pytest.importorskip("langchain_classic")
    out = run_cookbook("02_rerankers.py", timeout=900)
    assert "after the LLM reranker" in out
    # the relevance expert puts the passage that answers the question first
    after = out.split("after the LLM reranker", 1)[1].splitlines()
    assert "Visitors may climb the tower on Saturdays" in after[1]
    assert "LangChain answer:" in out and "LlamaIndex answer:" in out
    assert out.count("source p=") == 2
