"""What ChatExpertLLM declares to the langchain-tests standard suites (unit and integration
share it, so the two can never disagree)."""

from __future__ import annotations

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
