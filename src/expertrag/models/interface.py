"""The model interface every backend implements, and what its calls return.

:class:`ExpertModel` is what the rest of expertrag asks of a model: the chat skins, the
rerankers, the CRAG / Self-RAG graders and critics, GraphRAG extraction, the evaluators and
the command line take any object that has it. Three backends implement it:

- :class:`~expertrag.models.llm.ExpertLLM`: in-process (transformers + peft), one base
  model carrying named LoRA experts;
- :class:`~expertrag.models.server.ServerLLM`: a client of an OpenAI-compatible multi-LoRA
  server (vLLM);
- :class:`~expertrag.models.llamacpp.LlamaCppLLM`: llama.cpp's ``llama-server`` with the
  experts as GGUF LoRA adapters.

A new backend implements the same members, builds each request
with :mod:`expertrag.models.request` (so it accepts and refuses exactly the arguments the
others do) and returns :class:`GenerationResult` / :class:`StreamChunk`. ``docs/architecture.md``
walks through it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from expertrag.models.structured import SchemaViolation, ToolCall

Messages = list[dict[str, Any]]
#: one expert name (None: the bare base) or one per conversation of a batch
ExpertChoice = str | Sequence[str | None] | None


@dataclass
class GenerationResult:
    """The outcome of one generation: text or tool calls or parsed JSON, plus usage."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "tool_calls"
    model_name: str
    expert: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    parsed: Any = None
    #: log-probability of each generated token (with ``logprobs=True``)
    logprobs: list[float] | None = None
    #: the probability that the answer starts as the refusal, where a refusal gate applied
    refusal_probability: float | None = None
    #: set while the parsed JSON fails the schema (before a retry); never on a returned result
    _violation: SchemaViolation | None = field(default=None, repr=False, compare=False)

    @property
    def mean_logprob(self) -> float | None:
        """The mean token log-probability of the answer (Self-RAG's sequence score)."""
        if not self.logprobs:
            return None
        return sum(self.logprobs) / len(self.logprobs)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class StreamChunk:
    """A piece of streamed text; the last chunk has ``final`` set to the full result."""

    text: str
    final: GenerationResult | None = None


@runtime_checkable
class ExpertModel(Protocol):
    """A chat model with named LoRA experts chosen per call (see the module doc).

    ``generate`` takes one conversation (a message list or a string) and returns a
    :class:`GenerationResult`, or a list of conversations and returns a list; its keyword
    options and their defaults are :data:`expertrag.models.request.GENERATION_DEFAULTS`, and
    a backend refuses the same bad values the others refuse (an
    :class:`~expertrag.errors.InputError` before any work). ``label_probabilities`` gives
    P(label) for the first generated token of each conversation.
    """

    @property
    def model_name(self) -> str:
        """The base model's name."""
        ...

    @property
    def experts(self) -> list[str]:
        """The names of the experts this model can serve."""
        ...

    @property
    def context_window(self) -> int:
        """The most tokens a prompt and its answer may hold together."""
        ...

    @property
    def tokenizer(self) -> Any:
        """The base model's tokenizer (prompts are rendered with its chat template)."""
        ...

    def add_expert(self, name: str, path: str | Path, *, check_base: bool = True) -> None:
        """Attach (or load on the server) the LoRA adapter at ``path`` under ``name``."""
        ...

    def expert_info(self, name: str) -> dict[str, Any]:
        """What is known of an expert: its path, card (``metadata``) and refusal gate."""
        ...

    def render(self, messages: Any, tools: list[dict[str, Any]] | None = None) -> str:
        """The exact prompt string the model sees for ``messages``."""
        ...

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` encodes to (no special tokens)."""
        ...

    def generate(self, messages: Any, *, expert: ExpertChoice = None, **options: Any) -> Any:
        """One :class:`GenerationResult` per conversation (a list for a batch)."""
        ...

    async def agenerate(self, messages: Any, **options: Any) -> Any:
        """Async :meth:`generate`."""
        ...

    def stream(self, messages: Any, **options: Any) -> Iterator[StreamChunk]:
        """Text pieces as they are generated; the last chunk carries the result."""
        ...

    def astream(self, messages: Any, **options: Any) -> AsyncIterator[StreamChunk]:
        """Async :meth:`stream`."""
        ...

    def label_probabilities(self, batch: list[Any], labels: tuple[str, ...] = ("yes", "no"),
                            *, expert: ExpertChoice = None, batch_size: int = 16,
                            raw: bool = False, normalize: bool = True
                            ) -> list[dict[str, float]]:
        """P(label) for the first generated token of each conversation (or raw prompt)."""
        ...

    def close(self) -> None:
        """Free what the backend holds (worker thread, HTTP client)."""
        ...
