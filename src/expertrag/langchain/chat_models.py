"""``ChatExpertLLM``: the expertrag core LLM as a LangChain ``BaseChatModel``.

Conversion code only: LangChain messages <-> the core's plain message dicts, core results ->
``AIMessage`` / ``AIMessageChunk``. Generation, batching, streaming, experts and constrained
decoding (tools, JSON schema, JSON mode) all live in :class:`expertrag.models.ExpertLLM`.

``model`` names the base model (as in every LangChain chat model) and ``expert`` the LoRA
expert; per call, ``expert=`` or ``model=`` (the base's name, ``base:expert`` or an expert's
name: the served variants, as an OpenAI-compatible multi-LoRA server names them) pick
another. An expert trained on a prompt format (``grounded-qa``) gets recognised RAG prompts
in that format (:mod:`expertrag.prompt_format`; ``expert_prompt=False`` turns it off).
``.batch()`` / ``.abatch()`` of inputs sharing one config go to the core as ONE batched
``generate`` call.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from langchain_core.caches import BaseCache
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.globals import get_llm_cache
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call, tool_call_chunk
from langchain_core.output_parsers import (
    JsonOutputKeyToolsParser,
    JsonOutputParser,
    PydanticOutputParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult, LLMResult
from langchain_core.runnables import Runnable, RunnableConfig, RunnableMap, RunnablePassthrough
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from expertrag.compat import model_and_expert, warn_deprecated
from expertrag.errors import InputError
from expertrag.models.llm import ExpertLLM, GenerationResult, StreamChunk
from expertrag.models.loading import DEFAULT_MODEL
from expertrag.prompt_format import format_of, reformat

__all__ = ["ChatExpertLLM"]

# Call kwargs that LangChain helpers pass and that mean nothing for a local model.
_IGNORED_KWARGS = frozenset({"strict", "stream", "stream_usage", "n"})
_MEDIA_BLOCKS = frozenset({"image", "image_url", "audio", "input_audio", "file", "video"})
_ATTACH_LOCK = threading.Lock()


class ChatExpertLLM(BaseChatModel):
    """A local chat model (embedded SmolLM2-135M-Instruct by default) with LoRA experts.

    >>> llm = ChatExpertLLM(expert="grounded-qa")      # a shipped expert, attached on use
    >>> llm.invoke("Hi").response_metadata["model_name"]
    'smollm2-135m-instruct:grounded-qa'
    >>> llm.invoke("Hi", expert=None)           # the bare base for this call
    >>> ChatExpertLLM(model="path/to/model", experts={"mine": "path/to/adapter"}, expert="mine")

    Construction is cheap; weights load on first use and are shared (one copy, one worker
    thread) by every ``ChatExpertLLM`` with the same ``model`` and load options.
    ``base_model=`` and ``model=<expert>`` (the names before 0.2) still work, with an
    :class:`~expertrag.compat.ExpertRAGDeprecationWarning`.
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    model: str = DEFAULT_MODEL
    """Base model: an embedded alias, a local directory, a GGUF file or a hub id."""
    expert: str | None = None
    """The expert to use (None = the bare base model); a shipped expert's name attaches it."""
    experts: dict[str, str] = Field(default_factory=dict)
    """Expert name -> LoRA adapter folder, attached to the shared core on first use."""
    expert_prompt: bool = True
    """Put recognised RAG prompts in the expert's own prompt format, when it has one
    (``grounded-qa``: numbered passages and the instruction to cite them)."""
    max_tokens: int = Field(default=256, alias="max_new_tokens")
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    streaming: bool = False
    dtype: str | None = None
    device: str | None = None
    quantization: str | None = None
    # Accepted for drop-in compatibility with hosted chat models; unused locally.
    api_key: str | None = None
    timeout: float | None = None
    max_retries: int | None = None

    client: Any = Field(default=None, exclude=True)
    """An :class:`~expertrag.models.ExpertLLM` to use instead of the shared one."""

    _attached: bool = PrivateAttr(default=False)

    # ------------------------------------------------------------------ construction
    @model_validator(mode="before")
    @classmethod
    def _legacy_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return model_and_expert(data, "ChatExpertLLM", legacy_model_is_expert=True)
        return data

    @property
    def base_model(self) -> str:
        """Deprecated name of :attr:`model` (the base model)."""
        return self.model

    @classmethod
    def from_core(cls, llm: ExpertLLM, **kwargs: Any) -> ChatExpertLLM:
        """Wrap an existing core instance (custom loading, a server, tests); ``expert=``
        picks the expert (``model=<expert>``, the old form, still works with a warning)."""
        kwargs.pop("base_model", None)
        if "model" in kwargs and "expert" not in kwargs:
            value = kwargs.pop("model")
            if value not in (None, llm.model_name):
                warn_deprecated(f"ChatExpertLLM.from_core(llm, model={value!r}) is deprecated: "
                                f"use expert={value!r}")
                kwargs["expert"] = value
        kwargs.pop("model", None)
        return cls(client=llm, model=llm.model_name, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "expertrag-chat"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "expert": self.expert,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        if isinstance(kwargs.get("model"), str):
            name = kwargs["model"]
        else:
            expert = kwargs["expert"] if "expert" in kwargs else (
                self.expert if "model" not in kwargs else None)
            name = f"{self.model}:{expert}" if expert else self.model
        params = LangSmithParams(
            ls_provider="expertrag",
            ls_model_name=name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
        )
        max_tokens = kwargs.get("max_tokens", kwargs.get("max_new_tokens", self.max_tokens))
        if isinstance(max_tokens, int):
            params["ls_max_tokens"] = max_tokens
        if ls_stop := stop or self.stop:
            params["ls_stop"] = list(ls_stop)
        return params

    # ------------------------------------------------------------------ the core
    def _load_options(self) -> dict[str, Any]:
        opts = {"dtype": self.dtype, "device": self.device, "quantization": self.quantization}
        return {k: v for k, v in opts.items() if v is not None}

    def _core_instance(self) -> ExpertLLM:
        if self.client is not None:
            return self.client
        return ExpertLLM.shared(self.model, **self._load_options())

    @property
    def llm(self) -> ExpertLLM:
        """The core :class:`ExpertLLM` (loads weights and attaches ``experts`` on first use)."""
        core = self._core_instance()
        if self.experts and not self._attached:
            self._attach_experts(core)
        return core

    def _attach_experts(self, core: ExpertLLM) -> None:
        with _ATTACH_LOCK:
            for name, path in self.experts.items():
                if name in core.experts:
                    recorded = core.expert_info(name).get("path")
                    known = Path(recorded).resolve() if recorded else None
                    if known is not None and known != Path(path).resolve():
                        raise InputError(
                            f"expert {name!r} is already attached to {self.model!r} from "
                            f"{known}; it cannot also come from {path}"
                        )
                else:
                    core.add_expert(name, path)
            self._attached = True

    async def _allm(self) -> ExpertLLM:
        core = self._core_instance()
        if self.experts and not self._attached:
            await asyncio.to_thread(self._attach_experts, core)
        return core

    async def _aprepare(self, conv: list[dict[str, Any]], opts: dict[str, Any],
                        use_format: bool, core: Any) -> list[dict[str, Any]]:
        if self._missing_shipped(opts.get("expert"), core):  # loading an adapter blocks
            return await asyncio.to_thread(self._prepare, conv, opts, use_format, core)
        return self._prepare(conv, opts, use_format, core)

    # ------------------------------------------------------------------ requests
    def _expert(self, kwargs: dict[str, Any]) -> str | None:
        if "model" in kwargs:  # a served variant: the base, "base:expert" or an expert
            expert = kwargs.pop("model")
            kwargs.pop("expert", None)
        elif "expert" in kwargs:
            expert = kwargs.pop("expert")
        else:
            expert = self.expert
        if not expert or expert == self.model:
            return None
        return str(expert).removeprefix(f"{self.model}:")

    def _missing_shipped(self, expert: str | None, core: Any) -> bool:
        """Whether ``expert`` is a shipped expert not yet attached to ``core``."""
        if expert is None or expert in core.experts or expert in self.experts:
            return False
        from expertrag.experts import shipped_experts

        return expert in shipped_experts()

    def _prepare(self, conv: list[dict[str, Any]], opts: dict[str, Any], use_format: bool,
                 core: Any) -> list[dict[str, Any]]:
        """Attach a shipped expert named but not attached; put a recognised RAG prompt in
        the expert's own format (not for tool calls or structured output)."""
        expert = opts.get("expert")
        if self._missing_shipped(expert, core):
            from expertrag.experts import attach_shipped

            with _ATTACH_LOCK:
                if expert not in core.experts:
                    attach_shipped(core, [expert])
        if not use_format or any(k in opts for k in ("tools", "json_schema", "json_mode")):
            return conv
        return reformat(conv, format_of(core, expert))

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> tuple[list[dict[str, Any]], dict[str, Any], bool]:
        """(core messages, core generate kwargs, whether to apply the expert's prompt
        format) for one LangChain call."""
        kwargs = dict(kwargs)
        use_format = bool(kwargs.pop("expert_prompt", self.expert_prompt))
        opts: dict[str, Any] = {
            "expert": self._expert(kwargs),
            "max_new_tokens": kwargs.pop("max_tokens", kwargs.pop("max_new_tokens", None))
            or self.max_tokens,
            "temperature": kwargs.pop("temperature", self.temperature),
            "top_p": kwargs.pop("top_p", self.top_p),
            "seed": kwargs.pop("seed", self.seed),
            "stop": stop if stop is not None else self.stop,
        }
        for key in ("tools", "tool_choice", "parallel_tool_calls", "json_schema", "json_mode"):
            if kwargs.get(key) is not None:
                opts[key] = kwargs.pop(key)
            kwargs.pop(key, None)
        opts.update(_response_format(kwargs.pop("response_format", None)))
        unknown = set(kwargs) - _IGNORED_KWARGS
        if unknown:
            raise InputError(f"ChatExpertLLM got unknown call arguments: {sorted(unknown)}")
        return to_core_messages(messages), opts, use_format

    # ------------------------------------------------------------------ generate
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        conv, opts, use_format = self._request(messages, stop, kwargs)
        core = self.llm
        conv = self._prepare(conv, opts, use_format, core)
        batch = _BATCH.get()
        if batch is not None and batch.owner is self:
            result = batch.take(conv, opts, core, use_format)
        else:
            result = core.generate(conv, **opts)
        return _chat_result(result)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        conv, opts, use_format = self._request(messages, stop, kwargs)
        core = await self._allm()
        conv = await self._aprepare(conv, opts, use_format, core)
        batch = _BATCH.get()
        if batch is not None and batch.owner is self:
            result = await batch.atake(conv, opts, core, use_format)
        else:
            result = await core.agenerate(conv, **opts)
        return _chat_result(result)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        conv, opts, use_format = self._request(messages, stop, kwargs)
        core = self.llm
        conv = self._prepare(conv, opts, use_format, core)
        for piece in core.stream(conv, **opts):
            chunk = _chunk(piece)
            if run_manager:
                run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        conv, opts, use_format = self._request(messages, stop, kwargs)
        core = await self._allm()
        conv = await self._aprepare(conv, opts, use_format, core)
        async for piece in core.astream(conv, **opts):
            chunk = _chunk(piece)
            if run_manager:
                await run_manager.on_llm_new_token(piece.text, chunk=chunk)
            yield chunk

    # ------------------------------------------------------------------ batching
    def _can_batch(self, n: int) -> bool:
        if n < 2:
            return False
        cache = self.cache
        if isinstance(cache, BaseCache) or (cache is None and get_llm_cache() is not None):
            return False  # cached rows skip _generate; keep the one-by-one path
        return True

    def _batch_for(self, inputs: list[LanguageModelInput]) -> _Batch | None:
        if not self._can_batch(len(inputs)):
            return None
        try:
            return _Batch(self, [self._convert_input(i).to_messages() for i in inputs])
        except Exception:
            return None  # a bad input: LangChain's per-input path reports it

    def generate(self, messages: list[list[BaseMessage]], *args: Any, **kwargs: Any) -> LLMResult:
        """LangChain's ``generate``, with all conversations sent to the core as one batch."""
        if not self._can_batch(len(messages)):
            return super().generate(messages, *args, **kwargs)
        token = _BATCH.set(_Batch(self, messages))
        try:
            return super().generate(messages, *args, **kwargs)
        finally:
            _BATCH.reset(token)

    async def agenerate(
        self, messages: list[list[BaseMessage]], *args: Any, **kwargs: Any
    ) -> LLMResult:
        """Async ``generate``, with all conversations sent to the core as one batch."""
        if not self._can_batch(len(messages)):
            return await super().agenerate(messages, *args, **kwargs)
        token = _BATCH.set(_Batch(self, messages))
        try:
            return await super().agenerate(messages, *args, **kwargs)
        finally:
            _BATCH.reset(token)

    def batch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """LangChain's ``batch`` (per-input configs, callbacks, errors) with the generation
        itself done as ONE batched core call: the first input to reach the model generates
        for all of them, the others pick up their result."""
        pending = self._batch_for(inputs)
        if pending is None:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        token = _BATCH.set(pending)
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _BATCH.reset(token)

    async def abatch(
        self,
        inputs: list[LanguageModelInput],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async :meth:`batch`: one batched core call, awaited without blocking the loop."""
        pending = self._batch_for(inputs)
        if pending is None:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        token = _BATCH.set(pending)
        try:
            return await super().abatch(
                inputs, config, return_exceptions=return_exceptions, **kwargs
            )
        finally:
            _BATCH.reset(token)

    # ------------------------------------------------------------------ tools, structure
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | bool | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; ``tool_choice`` is "auto", "none", "any"/"required"/True, a tool name,
        or ``{"type": "function", "function": {"name": ...}}``. Forced calls always parse."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        choice = _tool_choice(tool_choice, names)
        if choice is not None:
            kwargs["tool_choice"] = choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict[str, Any] | type | None = None,
        *,
        method: Literal["json_schema", "function_calling", "json_mode"] = "json_schema",
        include_raw: bool = False,
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, dict[str, Any] | Any]:
        """Output matching `schema` (pydantic class, TypedDict, JSON Schema or OpenAI tool).

        ``json_schema`` (default) constrains decoding to the schema; ``function_calling``
        forces a call of the schema as the only tool; ``json_mode`` constrains to any JSON
        object (the prompt must ask for the keys). Output always parses unless cut off by
        ``max_tokens``.
        """
        if kwargs:
            raise ValueError(f"unsupported arguments: {sorted(kwargs)}")
        if schema is None and method != "json_mode":
            raise ValueError(f"schema is required for method={method!r}")
        is_pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        ls_format = {"kwargs": {"method": method, "strict": strict}, "schema": schema}
        llm: Runnable
        if method == "function_calling":
            tool_name = convert_to_openai_tool(schema)["function"]["name"]  # type: ignore[arg-type]
            llm = self.bind_tools(
                [schema],  # type: ignore[list-item]
                tool_choice=tool_name,
                parallel_tool_calls=False,
                ls_structured_output_format=ls_format,
            )
            parser: Runnable = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)  # type: ignore[list-item]
                if is_pydantic
                else JsonOutputKeyToolsParser(key_name=tool_name, first_tool_only=True)
            )
        elif method in ("json_schema", "json_mode"):
            if method == "json_mode":
                ls_format = {"kwargs": {"method": method}, "schema": schema}
                llm = self.bind(json_mode=True, ls_structured_output_format=ls_format)
            else:
                llm = self.bind(
                    json_schema=convert_to_json_schema(schema),
                    ls_structured_output_format=ls_format,
                )
            parser = (
                PydanticOutputParser(pydantic_object=schema)  # type: ignore[arg-type]
                if is_pydantic
                else JsonOutputParser()
            )
        else:
            raise ValueError(
                f"method must be 'json_schema', 'function_calling' or 'json_mode', not {method!r}"
            )
        if not include_raw:
            return llm | parser
        parsed = RunnablePassthrough.assign(
            parsed=itemgetter("raw") | parser, parsing_error=lambda _: None
        )
        no_parse = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | parsed.with_fallbacks(
            [no_parse], exception_key="parsing_error"
        )


# ---------------------------------------------------------------------- batching helper
class _Batch:
    """The conversations of one ``batch`` / ``generate`` call. The first ``_generate`` to run
    sends them all to the core as one batch; the others pick up their result. Should the
    batched call fail, every row falls back to its own call (so each gets its own error)."""

    def __init__(self, owner: ChatExpertLLM, messages: list[list[BaseMessage]]) -> None:
        self.owner = owner
        self.messages = messages
        self.results: dict[str, list[GenerationResult]] | None = None
        self.lock = threading.Lock()
        self.task: asyncio.Future[Any] | None = None

    @staticmethod
    def _key(conv: list[dict[str, Any]], opts: dict[str, Any]) -> str:
        return json.dumps([conv, opts], sort_keys=True, default=str)

    def _convs(self, opts: dict[str, Any], use_format: bool,
               core: Any) -> list[list[dict[str, Any]]] | None:
        try:
            return [self.owner._prepare(to_core_messages(m), opts, use_format, core)
                    for m in self.messages]
        except InputError:
            return None  # a bad row: let each row run (and fail) on its own

    def _store(self, convs: list[list[dict[str, Any]]] | None, opts: dict[str, Any],
               results: list[GenerationResult] | None) -> None:
        self.results = {}
        for conv, res in zip(convs or [], results or [], strict=True):
            self.results.setdefault(self._key(conv, opts), []).append(res)

    def _pop(self, conv: list[dict[str, Any]], opts: dict[str, Any]) -> GenerationResult | None:
        with self.lock:
            found = (self.results or {}).get(self._key(conv, opts))
            return found.pop(0) if found else None

    def take(self, conv: list[dict[str, Any]], opts: dict[str, Any],
             core: ExpertLLM, use_format: bool = True) -> GenerationResult:
        with self.lock:
            if self.results is None:
                convs, results = self._convs(opts, use_format, core), None
                try:
                    results = core.generate(convs, **opts) if convs else None
                except Exception:
                    results = None
                self._store(convs, opts, results)
        return self._pop(conv, opts) or core.generate(conv, **opts)

    async def atake(self, conv: list[dict[str, Any]], opts: dict[str, Any],
                    core: ExpertLLM, use_format: bool = True) -> GenerationResult:
        if self.task is None:
            convs = self._convs(opts, use_format, core)

            async def run() -> None:
                results = None
                try:
                    results = await core.agenerate(convs, **opts) if convs else None
                except Exception:
                    results = None
                self._store(convs, opts, results)

            self.task = asyncio.ensure_future(run())
        await asyncio.shield(self.task)
        return self._pop(conv, opts) or await core.agenerate(conv, **opts)


_BATCH: contextvars.ContextVar[_Batch | None] = contextvars.ContextVar(
    "expertrag_langchain_batch", default=None
)


# ---------------------------------------------------------------------- conversions
def _text(content: Any, index: int) -> str:
    """Plain text of a message's content (string or list of content blocks)."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
            continue
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            parts.append(str(block.get("text", "")))
        elif kind in _MEDIA_BLOCKS:
            raise InputError(
                f"message {index} has a {kind!r} content block; this model is text-only"
            )
        # tool_use / tool_call / reasoning / thinking blocks carry no prompt text here
    return "".join(parts)


def to_core_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages -> the core's message dicts (roles, tool calls, tool results)."""
    out: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, msg in enumerate(messages):
        content = _text(msg.content, i)
        if isinstance(msg, SystemMessage):
            out.append({"role": "system", "content": content})
        elif isinstance(msg, HumanMessage):
            out.append({"role": "user", "content": content})
        elif isinstance(msg, AIMessage):
            item: dict[str, Any] = {"role": "assistant", "content": content}
            if msg.tool_calls:
                item["tool_calls"] = [
                    {"name": c["name"], "arguments": c["args"], "id": c.get("id")}
                    for c in msg.tool_calls
                ]
                call_names.update({c["id"]: c["name"] for c in msg.tool_calls if c.get("id")})
            out.append(item)
        elif isinstance(msg, ToolMessage):
            out.append({
                "role": "tool",
                "content": content,
                "tool_call_id": msg.tool_call_id,
                "name": msg.name or call_names.get(msg.tool_call_id, "tool"),
                "status": msg.status,
            })
        elif isinstance(msg, FunctionMessage):
            out.append({"role": "tool", "content": content, "name": msg.name})
        elif isinstance(msg, ChatMessage):
            role = {"human": "user", "ai": "assistant"}.get(msg.role, msg.role)
            out.append({"role": role, "content": content})
        else:
            raise InputError(f"message {i}: unsupported message type {type(msg).__name__}")
    return out


def _display_name(result: GenerationResult) -> str:
    return f"{result.model_name}:{result.expert}" if result.expert else result.model_name


def _usage(result: GenerationResult) -> UsageMetadata:
    return UsageMetadata(
        input_tokens=result.prompt_tokens,
        output_tokens=result.completion_tokens,
        total_tokens=result.total_tokens,
    )


def _metadata(result: GenerationResult) -> dict[str, Any]:
    meta = {"model_name": _display_name(result), "finish_reason": result.finish_reason}
    if result.expert:
        meta["expert"] = result.expert
    return meta


def _chat_result(result: GenerationResult) -> ChatResult:
    message = AIMessage(
        content=result.text,
        tool_calls=[tool_call(name=c.name, args=c.arguments, id=c.id) for c in result.tool_calls],
        usage_metadata=_usage(result),
        response_metadata=_metadata(result),
    )
    return ChatResult(
        generations=[
            ChatGeneration(message=message, generation_info={"finish_reason": result.finish_reason})
        ],
        llm_output={"model_name": _display_name(result)},
    )


def _chunk(piece: StreamChunk) -> ChatGenerationChunk:
    final = piece.final
    if final is None:
        return ChatGenerationChunk(message=AIMessageChunk(content=piece.text))
    message = AIMessageChunk(
        content=piece.text,
        tool_call_chunks=[
            tool_call_chunk(
                name=c.name, args=json.dumps(c.arguments, ensure_ascii=False), id=c.id, index=i
            )
            for i, c in enumerate(final.tool_calls)
        ],
        usage_metadata=_usage(final),
        response_metadata=_metadata(final),
        chunk_position="last",
    )
    return ChatGenerationChunk(
        message=message, generation_info={"finish_reason": final.finish_reason}
    )


def _tool_choice(choice: Any, names: list[str]) -> str | None:
    """LangChain / OpenAI / Anthropic tool_choice forms -> the core's string form."""
    if choice is None or choice is False:
        return None
    if choice is True:
        return names[0] if len(names) == 1 else "any"
    if isinstance(choice, dict):
        if isinstance(choice.get("function"), dict):
            choice = choice["function"].get("name")
        elif choice.get("name"):
            choice = choice["name"]
        else:
            choice = choice.get("type")
    if choice == "required":
        choice = "any"
    if choice in ("auto", "none", "any") or choice in names:
        return choice
    raise ValueError(f"tool_choice {choice!r} is not 'auto', 'none', 'any' or a bound tool {names}")


def _response_format(fmt: Any) -> dict[str, Any]:
    """OpenAI ``response_format`` -> core ``json_mode`` / ``json_schema``."""
    if fmt is None:
        return {}
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "json_object":
        return {"json_mode": True}
    if kind == "json_schema":
        spec = fmt.get("json_schema") or {}
        return {"json_schema": spec.get("schema", spec)}
    if kind == "text":
        return {}
    return {"json_schema": convert_to_json_schema(fmt)}
