"""LlamaIndex LLM over :class:`expertrag.models.ExpertLLM` (conversion only).

LlamaIndex messages, tools and pydantic output classes are turned into the core's plain
message dicts, tool dicts and JSON schemas; the core's results are turned back into
``ChatResponse`` / ``CompletionResponse`` / ``ToolSelection`` / validated models. Generation,
batching, constrained decoding and expert routing all live in the core.

``model`` names the base model and ``expert`` the LoRA expert. An expert trained on a prompt
format (``grounded-qa``) gets the query engines' text-QA prompts in that format, so it cites
(:mod:`expertrag.prompt_format`; ``expert_prompt=False`` turns it off).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Generator, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    model_validator,
)
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.llm import (
    LLMStructuredPredictEndEvent,
    LLMStructuredPredictInProgressEvent,
    LLMStructuredPredictStartEvent,
)
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.llms.utils import parse_partial_json

from expertrag.compat import model_and_expert
from expertrag.models import DEFAULT_MODEL, ExpertLLM
from expertrag.prompt_format import format_of, reformat

if TYPE_CHECKING:
    from llama_index.core.prompts import BasePromptTemplate
    from llama_index.core.tools.types import BaseTool

    from expertrag.models import GenerationResult

dispatcher = get_dispatcher(__name__)

_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}
# LlamaIndex-only keywords, not forwarded; any other keyword goes to the core, which rejects
# unknown ones by name.
_FRAMEWORK_ONLY = ("formatted",)


# ---------------------------------------------------------------------------- conversion
def _tool_call_dict(call: Any) -> dict[str, Any]:
    """Our {"id", "name", "arguments"} from a dict (ours or OpenAI-style), a ToolSelection
    or a ToolCallBlock."""
    if isinstance(call, ToolSelection):
        return {"id": call.tool_id, "name": call.tool_name, "arguments": call.tool_kwargs}
    if isinstance(call, ToolCallBlock):
        args = call.tool_kwargs
        return {"id": call.tool_call_id, "name": call.tool_name,
                "arguments": parse_partial_json(args) if isinstance(args, str) else args}
    if isinstance(call, BaseModel):
        call = call.model_dump()
    spec = call.get("function", call)
    args = spec.get("arguments") or {}
    if isinstance(args, str):
        args = json.loads(args) if args.strip() else {}
    return {"id": call.get("id"), "name": spec["name"], "arguments": args}


def to_core_messages(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    """LlamaIndex ``ChatMessage``s -> the core's plain message dicts."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> tool name, for tool results
    for msg in messages:
        role = _ROLES.get(msg.role, "user")
        item: dict[str, Any] = {"role": role, "content": msg.content or ""}
        if role == "assistant":
            blocks = [b for b in msg.blocks if isinstance(b, ToolCallBlock)]
            raw = blocks or msg.additional_kwargs.get("tool_calls") or []
            calls = [_tool_call_dict(c) for c in raw]
            if calls:
                item["tool_calls"] = calls
                names.update({c["id"]: c["name"] for c in calls if c.get("id")})
        elif role == "tool":
            call_id = msg.additional_kwargs.get("tool_call_id")
            name = msg.additional_kwargs.get("name") or names.get(call_id)
            item.update({k: v for k, v in (("tool_call_id", call_id), ("name", name)) if v})
        out.append(item)
    return out


def to_core_tool(tool: BaseTool) -> dict[str, Any]:
    """A LlamaIndex tool -> the core's {"name", "description", "parameters"}."""
    meta = tool.metadata
    return {"name": meta.get_name(), "description": meta.description,
            "parameters": meta.get_parameters_dict()}


def _raw(result: GenerationResult) -> dict[str, Any]:
    raw = asdict(result)
    raw["usage"] = {"prompt_tokens": result.prompt_tokens,
                    "completion_tokens": result.completion_tokens,
                    "total_tokens": result.total_tokens}
    return raw


def to_chat_response(result: GenerationResult, text: str | None = None,
                     delta: str | None = None) -> ChatResponse:
    """The core's GenerationResult -> ``ChatResponse`` (tool calls in blocks and in
    ``additional_kwargs["tool_calls"]``; usage in ``raw["usage"]``)."""
    calls = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in result.tool_calls]
    content = result.text if text is None else text
    blocks: list[Any] = [TextBlock(text=content)] if content or not calls else []
    blocks += [ToolCallBlock(tool_call_id=c["id"], tool_name=c["name"], tool_kwargs=c["arguments"])
               for c in calls]
    extra = {"tool_calls": calls} if calls else {}
    message = ChatMessage(role=MessageRole.ASSISTANT, blocks=blocks, additional_kwargs=extra)
    return ChatResponse(message=message, raw=_raw(result), delta=delta,
                        additional_kwargs=dict(_raw(result)["usage"]))


def _partial_chat(text: str, delta: str) -> ChatResponse:
    return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta)


def _completion(chat: ChatResponse) -> CompletionResponse:
    return CompletionResponse(text=chat.message.content or "", raw=chat.raw, delta=chat.delta,
                              additional_kwargs=chat.additional_kwargs)


def _schema(output_cls: type[BaseModel]) -> dict[str, Any]:
    return output_cls.model_json_schema()


# ---------------------------------------------------------------------------- the LLM
class ExpertLlamaLLM(FunctionCallingLLM):
    """LlamaIndex ``FunctionCallingLLM`` backed by a local :class:`ExpertLLM`.

    >>> llm = ExpertLlamaLLM(expert="grounded-qa")    # a shipped expert, attached on use
    >>> llm.complete("Hi").text
    >>> llm.chat(messages, expert="other-expert")   # per-call expert override
    >>> ExpertLlamaLLM(model="path/to/model", experts={"mine": "path/to/adapter"}, expert="mine")

    Weights load on first use and are shared with every other wrapper of the same model.
    Structured output (``structured_predict``, ``as_structured_llm``) and tool calls are
    grammar-constrained by the core, so they always parse. ``base_model=`` (the name before
    0.2) still works, with an :class:`~expertrag.compat.ExpertRAGDeprecationWarning`.
    """

    model: str = Field(default=DEFAULT_MODEL,
                       description="Base model: an alias, a folder, a GGUF file or an HF id.")
    expert: str | None = Field(
        default=None,
        description="Expert used when a call names none; a shipped expert's name attaches it.")
    experts: dict[str, str] = Field(
        default_factory=dict, description="Expert name -> adapter folder, attached on first use."
    )
    expert_prompt: bool = Field(
        default=True,
        description="Put recognised RAG prompts (the query engines' text-QA template) in the "
                    "expert's own prompt format, when it has one (grounded-qa).")
    max_new_tokens: int = Field(default=256, gt=0)
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    context_window: int | None = Field(
        default=None, description="Override of the model's context window (tokens)."
    )
    load_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="dtype / device / quantization for loading."
    )

    _core: ExpertLLM = PrivateAttr()

    def __init__(self, core: ExpertLLM | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._core = core or ExpertLLM.shared(self.model, **self.load_kwargs)

    @model_validator(mode="before")
    @classmethod
    def _legacy_names(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return model_and_expert(data, "ExpertLlamaLLM", legacy_model_is_expert=False)
        return data

    @property
    def base_model(self) -> str:
        """Deprecated name of :attr:`model` (the base model)."""
        return self.model

    @classmethod
    def from_core(cls, core: ExpertLLM, **kwargs: Any) -> ExpertLlamaLLM:
        """Wrap an existing core instance (e.g. ``ExpertLLM.from_model(...)`` in tests)."""
        kwargs.pop("base_model", None)
        kwargs.pop("model", None)
        return cls(core=core, model=getattr(core, "model_id", core.model_name), **kwargs)

    @classmethod
    def class_name(cls) -> str:
        return "ExpertLlamaLLM"

    @property
    def core(self) -> ExpertLLM:
        """The underlying :class:`ExpertLLM`, with this wrapper's experts attached."""
        for name, path in self.experts.items():
            if name not in self._core.experts:
                self._core.add_expert(name, path)
        return self._core

    def _attach_shipped(self, expert: str | None) -> None:
        """Attach ``expert`` when it is a shipped expert the core does not have yet."""
        if expert is None or expert in self._core.experts or expert in self.experts:
            return
        from expertrag.experts import attach_shipped, shipped_experts

        if expert in shipped_experts():
            attach_shipped(self._core, [expert])

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window or self._core.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self._core.model_name,
            system_role=MessageRole.SYSTEM,
        )

    def _kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        out = {"expert": self.expert, "max_new_tokens": self.max_new_tokens,
               "temperature": self.temperature, "top_p": self.top_p}
        if "max_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
        out.update({k: v for k, v in kwargs.items() if k not in _FRAMEWORK_ONLY})
        return out

    def _request(self, messages: Sequence[ChatMessage],
                 kwargs: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(core messages, core options) of one call: a shipped expert named is attached, and
        a recognised RAG prompt put in the expert's own format (not for tools or schemas)."""
        kwargs = dict(kwargs)
        use_format = bool(kwargs.pop("expert_prompt", self.expert_prompt))
        opts = self._kwargs(kwargs)
        core = self.core
        self._attach_shipped(opts.get("expert"))
        conv = to_core_messages(messages)
        if use_format and not any(opts.get(k) for k in ("tools", "json_schema", "json_mode")):
            conv = reformat(conv, format_of(core, opts.get("expert")))
        return conv, opts

    # -- chat --------------------------------------------------------------------------
    # The undecorated helpers are shared by chat and completion, so that one call fires
    # one LLM callback/instrumentation event (complete() must not also count as a chat).
    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        conv, opts = self._request(messages, kwargs)
        return to_chat_response(self.core.generate(conv, **opts))

    async def _achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        conv, opts = self._request(messages, kwargs)
        return to_chat_response(await self.core.agenerate(conv, **opts))

    def _stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        conv, opts = self._request(messages, kwargs)
        chunks = self.core.stream(conv, **opts)
        text = ""
        for chunk in chunks:
            text += chunk.text
            if chunk.final is not None:
                yield to_chat_response(chunk.final, text=text, delta=chunk.text)
            elif chunk.text:
                yield _partial_chat(text, chunk.text)

    async def _astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        conv, opts = self._request(messages, kwargs)
        chunks = self.core.astream(conv, **opts)
        text = ""
        async for chunk in chunks:
            text += chunk.text
            if chunk.final is not None:
                yield to_chat_response(chunk.final, text=text, delta=chunk.text)
            elif chunk.text:
                yield _partial_chat(text, chunk.text)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await self._achat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        return self._astream_chat(messages, **kwargs)

    # -- completion (a single user turn) -------------------------------------------------
    @staticmethod
    def _as_messages(prompt: str) -> list[ChatMessage]:
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return _completion(self._chat(self._as_messages(prompt), **kwargs))

    @llm_completion_callback()
    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        return _completion(await self._achat(self._as_messages(prompt), **kwargs))

    @llm_completion_callback()
    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        return (_completion(c) for c in self._stream_chat(self._as_messages(prompt), **kwargs))

    @llm_completion_callback()
    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        chats = self._astream_chat(self._as_messages(prompt), **kwargs)

        async def gen() -> CompletionResponseAsyncGen:
            async for chat in chats:
                yield _completion(chat)

        return gen()

    # -- tools ---------------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[BaseTool],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        tool_choice: str | dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        if isinstance(tool_choice, dict):  # OpenAI style {"type": "function", "function": ...}
            tool_choice = tool_choice.get("function", {}).get("name") or tool_choice.get("type")
        if tool_choice is None:
            tool_choice = "required" if tool_required else "auto"
        return {"messages": messages, "tools": [to_core_tool(t) for t in tools] or None,
                "tool_choice": tool_choice if tools else None, **kwargs}

    def _validate_chat_with_tools_response(
        self,
        response: ChatResponse,
        tools: Sequence[BaseTool],
        allow_parallel_tool_calls: bool = False,
        **kwargs: Any,
    ) -> ChatResponse:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not allow_parallel_tool_calls and len(calls) > 1:
            first = calls[0]
            response.message.additional_kwargs["tool_calls"] = [first]
            response.message.blocks = [
                b for b in response.message.blocks
                if not isinstance(b, ToolCallBlock) or b.tool_call_id == first["id"]
            ]
        return response

    def get_tool_calls_from_response(
        self,
        response: ChatResponse,
        error_on_no_tool_call: bool = True,
        **kwargs: Any,
    ) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(
                f"expected at least one tool call, got text: {response.message.content!r:.200}"
            )
        return [ToolSelection(tool_id=c["id"], tool_name=c["name"], tool_kwargs=c["arguments"])
                for c in map(_tool_call_dict, calls)]

    # -- structured output: the pydantic schema goes to the core as a JSON schema ---------
    def _structured_messages(self, output_cls: type[BaseModel], prompt: BasePromptTemplate,
                             **prompt_args: Any):
        """Announce a structured prediction and build its messages."""
        dispatcher.event(LLMStructuredPredictStartEvent(
            output_cls=output_cls, template=prompt, template_args=prompt_args))
        return self._get_messages(prompt, **prompt_args)

    @dispatcher.span
    def structured_predict(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> BaseModel:
        messages = self._structured_messages(output_cls, prompt, **prompt_args)
        response = self.chat(messages, **(llm_kwargs or {}), json_schema=_schema(output_cls))
        result = output_cls.model_validate(response.raw["parsed"])
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @dispatcher.span
    async def astructured_predict(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> BaseModel:
        messages = self._structured_messages(output_cls, prompt, **prompt_args)
        response = await self.achat(messages, **(llm_kwargs or {}),
                                    json_schema=_schema(output_cls))
        result = output_cls.model_validate(response.raw["parsed"])
        dispatcher.event(LLMStructuredPredictEndEvent(output=result))
        return result

    @staticmethod
    def _partial(output_cls: type[BaseModel], text: str) -> BaseModel | None:
        from llama_index.core.program.utils import create_flexible_model

        try:
            return create_flexible_model(output_cls).model_validate(parse_partial_json(text))
        except Exception:  # not yet a parseable prefix
            return None

    @dispatcher.span
    def stream_structured_predict(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> Generator[BaseModel, None, None]:
        """Yields partial (flexible) objects as JSON streams in, then the validated one."""
        messages = self._structured_messages(output_cls, prompt, **prompt_args)
        stream = self.stream_chat(messages, **(llm_kwargs or {}), json_schema=_schema(output_cls))
        for response in stream:
            if response.raw is not None:  # the final chunk: the validated object
                result = output_cls.model_validate(response.raw["parsed"])
                dispatcher.event(LLMStructuredPredictEndEvent(output=result))
                yield result
            elif (partial := self._partial(output_cls, response.message.content or "")):
                dispatcher.event(LLMStructuredPredictInProgressEvent(output=partial))
                yield partial

    @dispatcher.span
    async def astream_structured_predict(
        self,
        output_cls: type[BaseModel],
        prompt: BasePromptTemplate,
        llm_kwargs: dict[str, Any] | None = None,
        **prompt_args: Any,
    ) -> AsyncGenerator[BaseModel, None]:
        messages = self._structured_messages(output_cls, prompt, **prompt_args)
        stream = await self.astream_chat(messages, **(llm_kwargs or {}),
                                         json_schema=_schema(output_cls))

        async def gen() -> AsyncGenerator[BaseModel, None]:
            async for response in stream:
                if response.raw is not None:
                    result = output_cls.model_validate(response.raw["parsed"])
                    dispatcher.event(LLMStructuredPredictEndEvent(output=result))
                    yield result
                elif (partial := self._partial(output_cls, response.message.content or "")):
                    dispatcher.event(LLMStructuredPredictInProgressEvent(output=partial))
                    yield partial

        return gen()
