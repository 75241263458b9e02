"""Contract tests for the LlamaIndex LLM skin, on a tiny random model (fast, offline).

LlamaIndex ships no standard test suite; these check what its components rely on: the
response types, streaming deltas, callbacks and instrumentation events, tool selection and
structured output (which must parse even when the model emits random tokens).
"""

import asyncio
from typing import Literal

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    CompletionResponse,
    MessageRole,
)
from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.callbacks.token_counting import TokenCountingHandler
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.llms.llm import ToolSelection
from llama_index.core.prompts import PromptTemplate
from llama_index.core.tools import FunctionTool
from pydantic import BaseModel, Field
from tiny_models import save_tiny_lora, tiny_llm

from expertrag.llama_index import ExpertLlamaLLM
from expertrag.llama_index.llms import to_core_messages

MSGS = [ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")]


@pytest.fixture(scope="module")
def core():
    llm = tiny_llm("tiny-li")
    yield llm
    llm.close()


@pytest.fixture
def llm(core):
    return ExpertLlamaLLM.from_core(core, max_new_tokens=12)


class Verdict(BaseModel):
    """A grading verdict (enum/bool fields: a random model cannot run on forever)."""

    label: Literal["good", "bad", "unsure"]
    grounded: bool
    flagged: bool | None = None


def pick(color: Literal["red", "blue"], loud: bool) -> str:
    """Pick a colour."""
    return f"{color.upper() if loud else color}!"


PICK = FunctionTool.from_defaults(fn=pick)


# ---------------------------------------------------------------------------- basics
def test_metadata(llm, core):
    meta = llm.metadata
    assert meta.is_chat_model and meta.is_function_calling_model
    assert meta.model_name == "tiny-li"
    assert meta.context_window == core.context_window
    assert meta.num_output == 12
    assert ExpertLlamaLLM.from_core(core, context_window=100).metadata.context_window == 100
    assert llm.class_name() == "ExpertLlamaLLM"


def test_complete_and_chat(llm):
    out = llm.complete("Hello")
    assert isinstance(out, CompletionResponse) and isinstance(out.text, str)
    assert out.raw["usage"]["completion_tokens"] <= 12
    chat = llm.chat(MSGS)
    assert isinstance(chat, ChatResponse)
    assert chat.message.role == MessageRole.ASSISTANT
    assert isinstance(chat.message.content, str)
    assert chat.raw["usage"]["prompt_tokens"] > 0
    # deterministic (greedy) and equal to the core's own answer
    assert llm.chat(MSGS).message.content == chat.message.content


def test_stream_matches_chat(llm):
    full = llm.chat(MSGS).message.content
    chunks = list(llm.stream_chat(MSGS))
    assert chunks and chunks[-1].message.content == full
    assert "".join(c.delta or "" for c in chunks) == full
    assert chunks[-1].raw["finish_reason"] in ("stop", "length")
    completions = list(llm.stream_complete("Hello"))
    assert completions[-1].text == llm.complete("Hello").text


async def test_async_variants(llm):
    full = llm.chat(MSGS).message.content
    assert (await llm.achat(MSGS)).message.content == full
    assert isinstance((await llm.acomplete("Hello")).text, str)
    chunks = [c async for c in await llm.astream_chat(MSGS)]
    assert "".join(c.delta or "" for c in chunks) == full
    completions = [c async for c in await llm.astream_complete("Hello")]
    assert completions[-1].text == llm.complete("Hello").text


async def test_achat_does_not_block_the_loop(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=32)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    await asyncio.gather(llm.achat(MSGS), llm.achat(MSGS))
    done.set()
    await task
    assert ticks > before + 1


def test_generation_kwargs_pass_through(llm):
    out = llm.complete("Hello", max_tokens=3)
    assert out.raw["usage"]["completion_tokens"] <= 3
    with pytest.raises((TypeError, ValueError), match="no_such_option"):
        llm.complete("Hello", no_such_option=1)


# ---------------------------------------------------------------------------- observability
class _Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        super().__init__([], [])
        self.events: list[tuple[str, CBEventType]] = []

    def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kw):
        self.events.append(("start", event_type))
        return event_id

    def on_event_end(self, event_type, payload=None, event_id="", **kw):
        self.events.append(("end", event_type))

    def start_trace(self, trace_id=None):
        pass

    def end_trace(self, trace_id=None, trace_map=None):
        pass


class _Events(BaseEventHandler):
    names: list = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "_Events"

    def handle(self, event, **kwargs) -> None:
        self.names.append(event.class_name())


def test_callbacks_fire(core):
    recorder = _Recorder()
    counter = TokenCountingHandler(tokenizer=core.tokenizer.encode)
    llm = ExpertLlamaLLM.from_core(
        core, max_new_tokens=8, callback_manager=CallbackManager([recorder, counter])
    )
    response = llm.chat(MSGS)
    assert ("start", CBEventType.LLM) in recorder.events
    assert ("end", CBEventType.LLM) in recorder.events
    assert counter.prompt_llm_token_count == response.raw["usage"]["prompt_tokens"]
    assert counter.completion_llm_token_count == response.raw["usage"]["completion_tokens"]
    llm.complete("Hello")  # one event per call: complete() does not also count as a chat
    list(llm.stream_complete("Hello"))
    assert len(counter.llm_token_counts) == 3


def test_instrumentation_events(llm):
    handler = _Events(names=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    try:
        llm.chat(MSGS)
        llm.complete("Hello")
        list(llm.stream_chat(MSGS))
        llm.structured_predict(Verdict, PromptTemplate("Grade: {x}"),
                              llm_kwargs={"max_new_tokens": 64}, x="ok")
    finally:
        root.event_handlers.remove(handler)
    for name in ("LLMChatStartEvent", "LLMChatEndEvent", "LLMChatInProgressEvent",
                 "LLMCompletionStartEvent", "LLMCompletionEndEvent",
                 "LLMStructuredPredictStartEvent", "LLMStructuredPredictEndEvent"):
        assert name in handler.names, name


# ---------------------------------------------------------------------------- tools
def test_chat_with_tools_required_gives_a_tool_selection(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=200)
    response = llm.chat_with_tools([PICK], user_msg="Pick a colour", tool_required=True)
    calls = llm.get_tool_calls_from_response(response)
    assert len(calls) == 1 and isinstance(calls[0], ToolSelection)
    assert calls[0].tool_name == "pick"
    assert calls[0].tool_kwargs["color"] in ("red", "blue")
    assert isinstance(calls[0].tool_kwargs["loud"], bool)
    assert response.message.additional_kwargs["tool_calls"][0]["id"] == calls[0].tool_id


def test_predict_and_call(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=200)
    out = llm.predict_and_call([PICK], user_msg="Pick a colour", tool_required=True)
    assert len(out.sources) == 1
    source = out.sources[0]
    assert source.tool_name == "pick" and not source.is_error
    assert out.response == pick(**source.raw_input["kwargs"])


async def test_apredict_and_call(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=200)
    out = await llm.apredict_and_call([PICK], user_msg="Pick", tool_required=True)
    assert out.sources[0].tool_name == "pick"


def test_no_tool_call_is_reported(llm):
    response = llm.chat(MSGS)
    assert llm.get_tool_calls_from_response(response, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="tool call"):
        llm.get_tool_calls_from_response(response)


def test_tool_history_round_trips_to_core_messages():
    call = {"id": "c1", "name": "pick", "arguments": {"color": "red", "loud": False}}
    history = [
        ChatMessage(role="user", content="Pick"),
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [call]}),
        ChatMessage(role="tool", content="red!", additional_kwargs={"tool_call_id": "c1"}),
    ]
    msgs = to_core_messages(history)
    assert msgs[1]["tool_calls"] == [call]
    assert msgs[2] == {"role": "tool", "content": "red!", "tool_call_id": "c1", "name": "pick"}
    # OpenAI-style entries and ToolSelection objects are accepted too
    openai = {"id": "c2", "type": "function",
              "function": {"name": "pick", "arguments": '{"color": "blue", "loud": true}'}}
    sel = ToolSelection(tool_id="c3", tool_name="pick", tool_kwargs={"color": "red"})
    msgs = to_core_messages([ChatMessage(role="assistant", content="",
                                         additional_kwargs={"tool_calls": [openai, sel]})])
    assert [c["arguments"] for c in msgs[0]["tool_calls"]] == [
        {"color": "blue", "loud": True}, {"color": "red"}]


def test_tool_response_feeds_back(core):
    """The assistant message with tool calls can be sent back with the tool result."""
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=200)
    first = llm.chat_with_tools([PICK], user_msg="Pick", tool_required=True)
    (call,) = llm.get_tool_calls_from_response(first)
    history = [ChatMessage(role="user", content="Pick"), first.message,
               ChatMessage(role="tool", content=pick(**call.tool_kwargs),
                           additional_kwargs={"tool_call_id": call.tool_id})]
    msgs = to_core_messages(history)
    assert msgs[1]["tool_calls"][0]["name"] == "pick"
    assert msgs[2]["name"] == "pick"
    final = llm.chat(history, max_new_tokens=8)
    assert isinstance(final.message.content, str)


# ---------------------------------------------------------------------------- structured
PROMPT = PromptTemplate("Grade this answer: {answer}")


def test_structured_predict_validates(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=64)
    out = llm.structured_predict(Verdict, PROMPT, answer="Paris")
    assert isinstance(out, Verdict)


async def test_astructured_predict_validates(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=64)
    assert isinstance(await llm.astructured_predict(Verdict, PROMPT, answer="x"), Verdict)


def test_stream_structured_predict_ends_validated(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=64)
    items = list(llm.stream_structured_predict(Verdict, PROMPT, answer="x"))
    assert isinstance(items[-1], Verdict)
    assert items[-1] == llm.structured_predict(Verdict, PROMPT, answer="x")


async def test_astream_structured_predict_ends_validated(core):
    llm = ExpertLlamaLLM.from_core(core, max_new_tokens=64)
    items = [i async for i in await llm.astream_structured_predict(Verdict, PROMPT, answer="x")]
    assert isinstance(items[-1], Verdict)


def test_as_structured_llm(core):
    sllm = ExpertLlamaLLM.from_core(core, max_new_tokens=64).as_structured_llm(Verdict)
    response = sllm.chat([ChatMessage(role="user", content="Grade: Paris")])
    assert isinstance(response.raw, Verdict)
    assert Verdict.model_validate_json(response.message.content) == response.raw
    assert isinstance(sllm.complete("Grade: Paris").raw, Verdict)


# ---------------------------------------------------------------------------- experts
def test_experts_attach_lazily_and_per_call_override(tmp_path):
    core = tiny_llm("tiny-li-experts")
    try:
        path = save_tiny_lora(core, str(tmp_path / "e1"))
        llm = ExpertLlamaLLM.from_core(core, experts={"e1": path}, max_new_tokens=6)
        assert "e1" not in core.experts  # attached on first use, not at construction
        assert llm.chat(MSGS).raw["expert"] is None
        assert "e1" in core.experts
        assert llm.chat(MSGS, expert="e1").raw["expert"] == "e1"
        selected = ExpertLlamaLLM.from_core(core, expert="e1", max_new_tokens=6)
        assert selected.chat(MSGS).raw["expert"] == "e1"
        assert selected.chat(MSGS, expert=None).raw["expert"] is None
    finally:
        core.close()
