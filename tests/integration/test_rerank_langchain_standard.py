"""langchain-tests standard retriever suite for the hybrid first stage, real all-MiniLM-L6-v2."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import RetrieversIntegrationTests

from langchain_expertrag import ExpertHybridRetriever

pytestmark = pytest.mark.integration

TEXTS = [
    "Paris is the capital and largest city of France.",
    "Berlin is the capital of Germany.",
    "The cat sat on the mat all afternoon.",
    "Bread is made from flour, water and yeast.",
    "The Seine river flows through Paris.",
]


class TestExpertHybridRetrieverIntegration(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[ExpertHybridRetriever]:
        return ExpertHybridRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"documents": TEXTS}

    @property
    def retriever_query_example(self) -> str:
        return "What is the capital of France?"
