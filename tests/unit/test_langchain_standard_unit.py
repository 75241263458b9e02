"""langchain-tests standard unit suites for the LangChain skin (no model weights load:
construction is lazy)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_capabilities import ExpertChatCapabilities
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from langchain_expertrag import ExpertEmbeddings


class TestChatExpertLLMUnit(ExpertChatCapabilities, ChatModelUnitTests):
    @property
    def chat_model_params(self) -> dict:
        return {"model": "smollm2-135m-instruct"}


class TestExpertEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[ExpertEmbeddings]:
        return ExpertEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "all-minilm-l6-v2"}
