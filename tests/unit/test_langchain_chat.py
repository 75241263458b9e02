"""The LangChain chat skin on a tiny random model: conversions, streaming, true batching,
tools and structured output (which must parse even though the model emits random tokens)."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.tools import tool
from pydantic import BaseModel
from tiny_models import save_tiny_lora, tiny_llm
from typing_extensions import TypedDict

from expertrag.errors import InputError, UnknownExpertError
from expertrag.langchain import ChatExpertLLM
from expertrag.langchain.chat_models import to_core_messages
from expertrag.models import GenerationResult


class Pick(BaseModel):
    """Pick a unit."""

    unit: Literal["c", "f"]
    ok: bool


class PickDict(TypedDict):
    unit: Literal["c", "f"]
    ok: bool


@tool
def set_unit(unit: Literal["c", "f"], ok: bool) -> str:
    """Set the temperature unit."""
    return unit


@tool
def ping() -> str:
    """Ping the server."""
    return "pong"


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Any:
    llm = tiny_llm()
    adapter = save_tiny_lora(llm, str(tmp_path_factory.mktemp("lora") / "tiny-expert"))
    llm.add_expert("tiny-expert", adapter)
    return llm


@pytest.fixture
def chat(core: Any) -> ChatExpertLLM:
    return ChatExpertLLM.from_core(core, max_tokens=8)


class Recorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.starts = 0
        self.ends = 0
        self.tokens: list[str] = []

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends += 1

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)


def count_calls(monkeypatch: pytest.MonkeyPatch, core: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    original = getattr(core, name)

    def spy(messages: Any, **kwargs: Any) -> Any:
        calls.append(messages)
        return original(messages, **kwargs)

    monkeypatch.setattr(core, name, spy)
    return calls


# ---------------------------------------------------------------------- construction
def test_construction_is_lazy_and_accepts_provider_fields() -> None:
    chat = ChatExpertLLM(api_key="k", timeout=5, max_retries=1, streaming=True, max_tokens=9)
    assert chat.client is None and chat.max_tokens == 9
    assert ChatExpertLLM(max_new_tokens=7).max_tokens == 7
    params = chat._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "expertrag"
    assert params["ls_model_name"] == "smollm2-135m-instruct"
    assert params["ls_max_tokens"] == 9 and params["ls_stop"] == ["x"]
    assert ChatExpertLLM(expert="e1")._get_ls_params()["ls_model_name"] == (
        "smollm2-135m-instruct:e1"
    )
    assert chat._get_ls_params(model="other")["ls_model_name"] == "other"


def test_message_conversion() -> None:
    messages = [
        SystemMessage("Be brief."),
        HumanMessage([{"type": "text", "text": "What is "}, "1 + 2?"], name="bob"),
        AIMessage(
            [{"type": "text", "text": "Let me add."}, {"type": "tool_use", "id": "c1"}],
            tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}],
        ),
        ToolMessage("3", tool_call_id="c1"),
        ToolMessage("oops", tool_call_id="c1", name="add", status="error"),
    ]
    assert to_core_messages(messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 2?"},
        {"role": "assistant", "content": "Let me add.",
         "tool_calls": [{"name": "add", "arguments": {"a": 1, "b": 2}, "id": "c1"}]},
        {"role": "tool", "content": "3", "tool_call_id": "c1", "name": "add",
         "status": "success"},
        {"role": "tool", "content": "oops", "tool_call_id": "c1", "name": "add",
         "status": "error"},
    ]
    with pytest.raises(InputError, match="text-only"):
        to_core_messages([HumanMessage([{"type": "image", "url": "http://x/y.png"}])])


# ---------------------------------------------------------------------- invoke / stream
def test_invoke_usage_and_metadata(chat: ChatExpertLLM) -> None:
    msg = chat.invoke([SystemMessage("Be brief."), HumanMessage("Hello")])
    assert isinstance(msg, AIMessage) and isinstance(msg.content, str)
    usage = msg.usage_metadata
    assert usage and usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= 8
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert msg.response_metadata["model_name"] == "tiny"
    assert msg.response_metadata["finish_reason"] in ("stop", "length")


def test_stream_matches_invoke(chat: ChatExpertLLM) -> None:
    recorder = Recorder()
    chunks = list(chat.stream("Hello", config={"callbacks": [recorder]}))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == chat.invoke("Hello").content
    assert full.response_metadata["model_name"] == "tiny"
    assert "".join(recorder.tokens) == full.content


async def test_ainvoke_and_astream_do_not_block_the_loop(chat: ChatExpertLLM) -> None:
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    msg = await chat.ainvoke("Hello", max_tokens=32)
    chunks = [c async for c in chat.astream("Hello", max_tokens=32)]
    done.set()
    await task
    assert ticks > 5
    assert isinstance(msg, AIMessage) and msg.usage_metadata
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata


# ---------------------------------------------------------------------- batching
def test_batch_is_one_core_call(chat: ChatExpertLLM, core: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    singles = [chat.invoke(q).content for q in ("a", "b b", "c c c")]
    calls = count_calls(monkeypatch, core, "generate")
    recorder = Recorder()
    out = chat.batch(["a", "b b", "c c c"], config={"callbacks": [recorder]})
    assert len(calls) == 1 and len(calls[0]) == 3
    assert [m.content for m in out] == singles
    assert recorder.starts == 3 and recorder.ends == 3
    assert all(m.usage_metadata for m in out)


async def test_abatch_is_one_core_call(chat: ChatExpertLLM, core: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    original = core.agenerate

    async def spy(messages: Any, **kwargs: Any) -> Any:
        calls.append(messages)
        return await original(messages, **kwargs)

    monkeypatch.setattr(core, "agenerate", spy)
    out = await chat.abatch(["a", "b", "c", "d"])
    assert len(calls) == 1 and len(calls[0]) == 4
    assert len(out) == 4 and all(isinstance(m, AIMessage) for m in out)


def test_batch_with_differing_configs_still_works(chat: ChatExpertLLM) -> None:
    out = chat.batch(["a", "b"], config=[{"tags": ["x"]}, {"tags": ["y"]}])
    assert len(out) == 2 and all(isinstance(m, AIMessage) for m in out)


def test_batch_return_exceptions_isolates_bad_inputs(chat: ChatExpertLLM) -> None:
    bad = [HumanMessage([{"type": "image", "url": "http://x/y.png"}])]
    out = chat.batch(["a", bad, "c"], return_exceptions=True)
    assert isinstance(out[0], AIMessage) and isinstance(out[2], AIMessage)
    assert isinstance(out[1], InputError)


def test_batch_through_bound_tools_and_chains(chat: ChatExpertLLM, core: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = count_calls(monkeypatch, core, "generate")
    structured = chat.with_structured_output(Pick)
    out = structured.batch(["x", "y", "z"], max_tokens=64)
    assert len(calls) == 1
    assert all(isinstance(p, Pick) for p in out)


# ---------------------------------------------------------------------- experts
def test_expert_selection(core: Any) -> None:
    chat = ChatExpertLLM.from_core(core, expert="tiny-expert", max_tokens=4)
    assert chat.invoke("hi").response_metadata["model_name"] == "tiny:tiny-expert"
    assert chat.invoke("hi", expert=None).response_metadata["model_name"] == "tiny"
    assert chat.invoke("hi", model=None).response_metadata["model_name"] == "tiny"
    assert chat.invoke("hi", model="tiny").response_metadata["model_name"] == "tiny"
    plain = ChatExpertLLM.from_core(core, max_tokens=4)
    for kwargs in ({"model": "tiny-expert"}, {"expert": "tiny-expert"}):
        msg = plain.invoke("hi", **kwargs)
        assert msg.response_metadata["model_name"] == "tiny:tiny-expert"
        assert msg.response_metadata["expert"] == "tiny-expert"
    chunks = list(plain.stream("hi", model="tiny-expert"))
    assert chunks[-1].response_metadata["model_name"] == "tiny:tiny-expert"
    with pytest.raises(UnknownExpertError):
        plain.invoke("hi", model="nope")


def test_experts_field_attaches_on_first_use(tmp_path: Any) -> None:
    core = tiny_llm(name="tiny2")
    path = save_tiny_lora(core, str(tmp_path / "adapter"))
    chat = ChatExpertLLM.from_core(core, experts={"e1": path}, expert="e1", max_tokens=4)
    assert "e1" not in core.experts
    assert chat.invoke("hi").response_metadata["model_name"] == "tiny2:e1"
    assert "e1" in core.experts
    # a second wrapper naming the same adapter shares it; another path is refused
    assert ChatExpertLLM.from_core(core, experts={"e1": path}).invoke("hi", model="e1")
    other = save_tiny_lora(core, str(tmp_path / "other"))
    with pytest.raises(InputError, match="already attached"):
        ChatExpertLLM.from_core(core, experts={"e1": other}).invoke("hi")


# ---------------------------------------------------------------------- tools
@pytest.mark.parametrize(
    "choice",
    ["any", "required", True, "set_unit", {"type": "function", "function": {"name": "set_unit"}}],
)
def test_forced_tool_calls_parse(chat: ChatExpertLLM, choice: Any) -> None:
    bound = chat.bind_tools([set_unit, ping], tool_choice=choice) if choice is not True else (
        chat.bind_tools([set_unit], tool_choice=True))
    msg = bound.invoke("Use celsius.", max_tokens=64)
    assert msg.tool_calls, msg
    call = msg.tool_calls[0]
    assert call["id"] and call["type"] == "tool_call"
    if call["name"] == "set_unit":
        assert call["args"]["unit"] in ("c", "f") and isinstance(call["args"]["ok"], bool)
    else:
        assert call == {**call, "name": "ping", "args": {}}
    assert msg.response_metadata["finish_reason"] == "tool_calls"
    assert any(b["type"] == "tool_call" for b in msg.content_blocks)


def test_streamed_tool_calls_have_indexed_chunks(chat: ChatExpertLLM) -> None:
    bound = chat.bind_tools([set_unit], tool_choice="set_unit")
    chunks = list(bound.stream("Use celsius.", max_tokens=64))
    last = chunks[-1]
    assert last.tool_call_chunks and last.tool_call_chunks[0]["index"] == 0
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.tool_calls[0]["name"] == "set_unit"
    assert json.loads(last.tool_call_chunks[0]["args"]) == full.tool_calls[0]["args"]


def test_tool_history_round_trip_and_no_arg_tool(chat: ChatExpertLLM) -> None:
    bound = chat.bind_tools([ping], tool_choice="any")
    first = bound.invoke("ping it", max_tokens=48)
    assert first.tool_calls == [{**first.tool_calls[0], "name": "ping", "args": {}}]
    reply = ping.invoke(first.tool_calls[0])
    assert isinstance(reply, ToolMessage)
    follow = chat.bind_tools([ping]).invoke(
        [HumanMessage("ping it"), first, reply], max_tokens=64)
    assert isinstance(follow, AIMessage)


def test_tool_choice_validation(chat: ChatExpertLLM) -> None:
    with pytest.raises(ValueError, match="tool_choice"):
        chat.bind_tools([ping], tool_choice="nope")
    with pytest.raises(InputError, match="unknown call arguments"):
        chat.invoke("hi", frobnicate=1)


# ---------------------------------------------------------------------- structured output
@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
@pytest.mark.parametrize("schema", [Pick, PickDict, Pick.model_json_schema()])
def test_structured_output_always_validates(chat: ChatExpertLLM, method: str,
                                            schema: Any) -> None:
    structured = chat.with_structured_output(schema, method=method)
    result = structured.invoke("Pick one.", max_tokens=64)
    if schema is Pick:
        assert isinstance(result, Pick)
    else:
        assert isinstance(result, dict) and result["unit"] in ("c", "f")
        assert isinstance(result["ok"], bool)
    streamed = list(structured.stream("Pick one.", max_tokens=64))
    assert streamed and streamed[-1] == result


def test_structured_output_include_raw(core: Any) -> None:
    chat = ChatExpertLLM.from_core(core, max_tokens=64)
    out = chat.with_structured_output(Pick, include_raw=True).invoke("Pick.")
    assert set(out) == {"raw", "parsed", "parsing_error"}
    assert isinstance(out["raw"], AIMessage) and isinstance(out["parsed"], Pick)
    assert out["parsing_error"] is None


def test_json_mode_and_schema_reach_the_core(chat: ChatExpertLLM, core: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    def fake(messages: Any, **kwargs: Any) -> GenerationResult:
        seen.append(kwargs)
        return GenerationResult('{"unit": "c", "ok": false}', 3, 4, "stop", "tiny")

    monkeypatch.setattr(core, "generate", fake)
    assert chat.with_structured_output(Pick, method="json_mode").invoke("x") == Pick(
        unit="c", ok=False)
    assert seen[-1]["json_mode"] is True
    assert chat.with_structured_output(None, method="json_mode").invoke("x") == {
        "unit": "c", "ok": False}
    chat.with_structured_output(PickDict).invoke("x")
    assert seen[-1]["json_schema"]["properties"]["unit"]["enum"] == ["c", "f"]
    chat.invoke("x", response_format={"type": "json_object"})
    assert seen[-1]["json_mode"] is True
