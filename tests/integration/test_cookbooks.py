"""Every cookbook runs end to end with the real embedded models."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

COOKBOOKS = Path(__file__).resolve().parents[2] / "cookbooks"


def test_langchain_rag_chain(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(COOKBOOKS / "01_langchain_rag_chain.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ingested 7 files" in out
    assert out.count("A:") == 3


def test_llama_index_query_engine(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(COOKBOOKS / "03_llama_index_query_engine.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "source:" in out
    assert "structured: subject=" in out
