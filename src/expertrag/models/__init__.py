"""The model layer: loading, named LoRA experts, batched/streamed/constrained generation."""

from expertrag.models.llm import ExpertLLM, GenerationResult, StreamChunk
from expertrag.models.loading import ALIASES, DEFAULT_MODEL, LoadedModel, load_base_model
from expertrag.models.structured import ToolCall

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "ExpertLLM",
    "GenerationResult",
    "LoadedModel",
    "StreamChunk",
    "ToolCall",
    "load_base_model",
]
