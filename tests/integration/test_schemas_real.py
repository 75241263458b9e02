"""The schema battery on the real embedded SmolLM2-135M: every schema gives a valid result or
is refused before generation (benchmarks/bench_schemas.py reports the figures per class)."""

from __future__ import annotations

import pytest
from schema_battery import CASES, run_case

from expertrag.models import ExpertLLM

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def llm() -> ExpertLLM:
    return ExpertLLM().load()


def test_battery_is_valid_or_refused_up_front(llm: ExpertLLM) -> None:
    outcomes = {case.name: run_case(llm, case, max_new_tokens=24) for case in CASES}
    failed = {name: out for name, out in outcomes.items() if out not in ("valid", "refused")}
    assert not failed
    for case in CASES:
        assert outcomes[case.name] == ("refused" if case.refused else "valid"), case.name
