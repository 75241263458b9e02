"""langchain-tests standard unit suites for the LangChain skin (no model weights load:
construction is lazy)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests

from expertrag.langchain import ChatExpertLLM, ExpertEmbeddings


class TestChatExpertLLMUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatExpertLLM]:
        return ChatExpertLLM

    @property
    def chat_model_params(self) -> dict:
        return {"base_model": "smollm2-135m-instruct"}

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def model_override_value(self) -> str:
        return "tiny-expert"


class TestExpertEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[ExpertEmbeddings]:
        return ExpertEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "all-minilm-l6-v2"}
