"""Shared by the integration tests: running a cookbook as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

COOKBOOKS = Path(__file__).resolve().parents[2] / "cookbooks"


def cookbook_output(name: str, timeout: int = 1200) -> str:
    """Run ``cookbooks/<name>`` in a fresh interpreter (offline, quiet tokenizers) and
    return what it printed; a failing cookbook fails the test with its stderr's tail."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(COOKBOOKS / name)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture
def run_cookbook() -> Callable[..., str]:
    """:func:`cookbook_output`, as a fixture."""
    return cookbook_output
