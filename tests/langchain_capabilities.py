"""What ChatExpertLLM declares to the langchain-tests standard suites (unit and integration
share it, so the two can never disagree)."""

from __future__ import annotations

from typing import Any

import pytest

from langchain_expertrag import ChatExpertLLM


class ExpertChatCapabilities:
    """Mixin for ChatModelUnitTests / ChatModelIntegrationTests subclasses."""

    @property
    def chat_model_class(self) -> type[ChatExpertLLM]:
        return ChatExpertLLM

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


class ServedChatSuite(ExpertChatCapabilities):
    """The langchain-tests integration suite over a served backend (vLLM, llama.cpp): the
    test module's ``server`` fixture, an ExpertModel serving grounded-qa, is the client.
    Subclass it together with ``ChatModelIntegrationTests``."""

    @pytest.fixture(autouse=True)
    def _server(self, server: Any) -> None:
        self._core = server

    @property
    def model_override_value(self) -> str:
        return "grounded-qa"  # an expert the server serves

    @property
    def chat_model_params(self) -> dict:
        return {"client": self._core, "base_model": self._core.model_name, "max_tokens": 64}

    @pytest.mark.xfail(reason="model knowledge: SmolLM2-135M omits the requested key in "
                       "JSON mode (see test_langchain_standard.py)", strict=False)
    def test_json_mode(self, model: Any) -> None:
        super().test_json_mode(model)  # type: ignore[misc]
