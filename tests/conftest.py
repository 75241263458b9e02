"""Test-wide settings: everything runs offline, without telemetry."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# --- tiny random model shared by fast unit tests (see tests/tiny_models.py) ------------------
import pytest


@pytest.fixture(scope="session")
def tiny_llm():
    """A session-wide ExpertLLM over a tiny random Llama (builds in ~1 s, offline).
    Shared: do not attach experts to it; build your own with ``tiny_models.tiny_llm()``."""
    from tiny_models import tiny_llm as build

    return build()
