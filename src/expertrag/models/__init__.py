"""The model layer: one interface (:class:`ExpertModel`) and its backends, loading, named
LoRA experts, batched / streamed / constrained generation.

``interface.py`` (the protocol and result types), ``request.py`` (request checks shared by
every backend), ``adapters.py`` (attached experts), ``decoding.py`` (refusal gate, stops,
streaming); backends: ``llm.py`` (in-process), ``server.py`` (vLLM server client).
"""

from expertrag.models.interface import ExpertModel, GenerationResult, StreamChunk
from expertrag.models.llm import ExpertLLM
from expertrag.models.loading import ALIASES, DEFAULT_MODEL, LoadedModel, load_base_model
from expertrag.models.structured import ToolCall

__all__ = [
    "ALIASES",
    "DEFAULT_MODEL",
    "ExpertLLM",
    "ExpertModel",
    "GenerationResult",
    "LoadedModel",
    "StreamChunk",
    "ToolCall",
    "load_base_model",
]
