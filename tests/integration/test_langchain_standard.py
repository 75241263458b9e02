"""langchain-tests standard integration suites against the real embedded models:
SmolLM2-135M-Instruct (chat, with a random LoRA expert for the model-override tests) and
all-MiniLM-L6-v2 (embeddings)."""

from __future__ import annotations

import pytest

pytest.importorskip("langchain_tests")

from langchain_capabilities import ExpertChatCapabilities
from langchain_core.language_models import BaseChatModel
from langchain_tests.integration_tests import (
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
)
from tiny_models import save_tiny_lora

from expertrag.models import ExpertLLM
from langchain_expertrag import ExpertEmbeddings

pytestmark = pytest.mark.integration

BASE = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def expert_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised LoRA adapter for the real base (built on a fresh model of the
    same config, so the shared base is not touched)."""
    core = ExpertLLM.shared(BASE)
    return save_tiny_lora(core, str(tmp_path_factory.mktemp("lora") / "tiny-expert"), seed=3)


class TestChatExpertLLMIntegration(ExpertChatCapabilities, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _expert(self, expert_path: str) -> None:
        self._expert_path = expert_path

    @property
    def chat_model_params(self) -> dict:
        return {
            "model": BASE,
            "max_tokens": 64,
            "experts": {"tiny-expert": self._expert_path},
        }

    @pytest.mark.xfail(
        reason="model knowledge: in JSON mode (any JSON object; keys are not enforced, only "
        "asked for in the prompt) SmolLM2-135M writes a 'setup' and omits the requested "
        "'punchline' key. The wrapper's json_mode path is covered in "
        "tests/unit/test_langchain_chat.py, and method='json_schema' (which enforces the "
        "keys) passes the same test above.",
        strict=False,
    )
    def test_json_mode(self, model: BaseChatModel) -> None:
        super().test_json_mode(model)


class TestExpertEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[ExpertEmbeddings]:
        return ExpertEmbeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model": "all-minilm-l6-v2"}
