"""One request, built and checked once for every backend.

Each backend (:class:`~expertrag.models.llm.ExpertLLM`,
:class:`~expertrag.models.server.ServerLLM`, any future one) turns its call's arguments into
a :class:`Request` here, so they accept the same arguments and refuse the same bad ones with
the same :class:`~expertrag.errors.InputError`, before any token is generated or any request
is sent. What a generation needs after that is shared too: the refusal gate a row gets, the
tool calls a conversation has already answered, the checks on label words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from expertrag.errors import InputError
from expertrag.experts.grounded_qa import REFUSAL
from expertrag.models.chat import check_num_beams, validate_messages
from expertrag.models.schemas import prepare_schema
from expertrag.models.structured import TOOL_CALL_OPEN, ToolCall, call_key, normalize_tool

Messages = list[dict[str, Any]]

#: the keyword options of ``generate`` / ``stream`` and their defaults (every backend)
GENERATION_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 256, "temperature": 0.0, "top_p": 1.0, "seed": None, "stop": None,
    "json_schema": None, "json_mode": False, "tools": None, "tool_choice": None,
    "parallel_tool_calls": True, "logprobs": False, "continue_final_message": False,
    "refusal_gate": True, "refusal_threshold": None, "num_beams": None,
}


@dataclass
class Options:
    """The checked, normalised options of one call (see :func:`build_options`)."""

    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    json_schema: dict[str, Any] | None
    json_mode: bool
    tools: list[dict[str, Any]]
    tool_choice: str  # "auto" | "none" | "any" | a tool's name
    parallel_tool_calls: bool = True
    logprobs: bool = False
    continue_final_message: bool = False
    refusal_gate: bool = True
    refusal_threshold: float | None = None
    num_beams: int | None = None  # None: the expert's own (its card's ``decoding``), else 1
    attempt: int = 0  # > 0 on a retry after a failed post-check of the JSON

    @property
    def constrained(self) -> bool:
        """Whether a grammar shapes the output (JSON Schema, JSON mode or tool calls)."""
        return bool(self.json_schema is not None or self.json_mode or self.tools)

    @property
    def schema(self) -> dict[str, Any] | None:
        """The JSON Schema the output follows (JSON mode: any object); None for text."""
        if self.json_schema is not None:
            return self.json_schema
        return {"type": "object"} if self.json_mode else None


@dataclass
class Request:
    """A checked call: the conversations, one expert per conversation, the options, and
    whether the caller passed a batch (a list comes back) or one conversation."""

    convs: list[Messages]
    experts: list[str | None]
    options: Options
    is_batch: bool


def check_arguments(kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` over :data:`GENERATION_DEFAULTS`; an unknown name is an InputError."""
    unknown = set(kwargs) - set(GENERATION_DEFAULTS)
    if unknown:
        raise InputError(f"unknown generation arguments: {sorted(unknown)}")
    return {**GENERATION_DEFAULTS, **kwargs}


def build_options(max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                  stop: str | list[str] | None, json_schema: dict[str, Any] | None,
                  json_mode: bool, tools: list[dict[str, Any]] | None,
                  tool_choice: str | None, parallel_tool_calls: bool = True,
                  logprobs: bool = False, continue_final_message: bool = False,
                  refusal_gate: bool = True, refusal_threshold: float | None = None,
                  num_beams: int | None = None) -> Options:
    """Check every option and normalise it: stop strings as a list, tools in their bare
    form (``tool_choice`` "required" means "any", "none" drops the tools, a tool's name
    keeps only it), the JSON Schema prepared (a keyword that can be neither enforced nor
    checked is refused now, not after generating)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not _number(temperature) or not _number(top_p) or temperature < 0 \
            or not 0 < top_p <= 1:
        raise InputError(
            f"need temperature >= 0 and 0 < top_p <= 1, got {temperature!r}, {top_p!r}"
        )
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if any(not isinstance(s, str) or not s for s in stops):
        raise InputError(f"stop sequences must be non-empty strings, got {stops!r}")
    norm_tools = [normalize_tool(t) for t in tools or []]
    choice = tool_choice or "auto"
    if choice == "required":
        choice = "any"
    if norm_tools:
        names = {t["name"] for t in norm_tools}
        if choice not in ("auto", "none", "any") and choice not in names:
            raise InputError(f"tool_choice {choice!r} names no bound tool ({sorted(names)})")
        if choice == "none":
            norm_tools = []
        elif choice not in ("auto", "any"):
            norm_tools = [t for t in norm_tools if t["name"] == choice]
    if norm_tools and (json_schema is not None or json_mode):
        raise InputError("tools and json_schema/json_mode cannot be combined in one call")
    if json_schema is not None:
        # refuse, before any token, a schema keyword that can be neither enforced by the
        # grammar nor post-checked (UnsupportedSchemaError names it)
        prepare_schema(json_schema)
    if norm_tools and continue_final_message:
        raise InputError("continue_final_message cannot be combined with tools")
    if refusal_threshold is not None and not (_number(refusal_threshold)
                                              and 0.0 <= refusal_threshold <= 1.0):
        raise InputError(f"refusal_threshold must be within [0, 1], got "
                         f"{refusal_threshold!r}")
    if (check_num_beams(num_beams) or 1) > 1:
        clash = [name for name, on in (("temperature > 0", temperature > 0),
                                       ("json_schema/json_mode/tools",
                                        norm_tools or json_schema is not None or json_mode),
                                       ("logprobs", logprobs)) if on]
        if clash:
            raise InputError(f"num_beams > 1 is plain beam search: it cannot be combined "
                             f"with {', '.join(clash)}")
    return Options(max_new_tokens, float(temperature), float(top_p), seed, stops,
                   json_schema, bool(json_mode), norm_tools, choice,
                   bool(parallel_tool_calls), bool(logprobs), bool(continue_final_message),
                   bool(refusal_gate), refusal_threshold, num_beams=num_beams)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def as_batch(messages: Any) -> tuple[list[Messages], bool]:
    """The checked conversations, and whether ``messages`` was a batch: a list whose items
    are all message lists or strings is a batch, anything else one conversation."""
    if isinstance(messages, str):
        return [validate_messages(messages)], False
    if isinstance(messages, list) and messages and all(
        isinstance(m, list | str) for m in messages
    ):
        return [validate_messages(m) for m in messages], True
    return [validate_messages(messages)], False


def experts_for(expert: Any, n: int, check: Callable[[str | None], Any]
                ) -> list[str | None]:
    """One expert per conversation: ``expert`` repeated, or its list (as long as the
    batch); ``check`` raises for an expert the backend cannot serve."""
    experts = list(expert) if isinstance(expert, list | tuple) else [expert] * n
    if len(experts) != n:
        raise InputError(f"got {len(experts)} experts for a batch of {n} conversations")
    for e in dict.fromkeys(experts):
        check(e)
    return experts


def build_request(messages: Any, expert: Any, options: dict[str, Any],
                  check: Callable[[str | None], Any]) -> Request:
    """Check a whole call: the conversations, the options (all of
    :data:`GENERATION_DEFAULTS`' names, nothing else), then the experts."""
    convs, is_batch = as_batch(messages)
    opts = build_options(**check_arguments(options))
    return Request(convs, experts_for(expert, len(convs), check), opts, is_batch)


def label_prompts(batch: Any, labels: tuple[str, ...], expert: Any, raw: bool,
                  render: Callable[[Messages], str], check: Callable[[str | None], Any]
                  ) -> tuple[list[str], list[str | None]]:
    """The prompts and experts of a ``label_probabilities`` call: ``raw=True`` takes
    prompt strings as they are, otherwise conversations are checked and rendered."""
    if not labels or len(set(labels)) != len(labels):
        raise InputError(f"labels must be distinct non-empty strings, got {labels!r}")
    if raw:
        if any(not isinstance(p, str) or not p for p in batch):
            raise InputError("raw=True needs a list of non-empty prompt strings")
        prompts = list(batch)
        return prompts, experts_for(expert, len(prompts), check)
    convs = [validate_messages(m) for m in batch]
    experts = experts_for(expert, len(convs), check)
    return [render(m) for m in convs], experts


def label_token_ids(tokenizer: Any, labels: tuple[str, ...]) -> list[int]:
    """The first token of each label; labels that encode to nothing or share their first
    token cannot be told apart from one next-token distribution and are refused."""
    ids = []
    for label in labels:
        toks = tokenizer(label, add_special_tokens=False)["input_ids"]
        if not toks:
            raise InputError(f"label {label!r} encodes to no tokens")
        ids.append(toks[0])
    if len(set(ids)) != len(ids):
        raise InputError(f"labels {labels!r} share their first token; pick distinct words")
    return ids


def gate_for(own: tuple[str, float] | None, opts: Options) -> tuple[str, float] | None:
    """The refusal gate of one row: ``(refusal text, threshold)`` or None. ``own`` is the
    expert's (from its card); ``refusal_threshold`` overrides its threshold for the call
    and gates an expert without one (or the base) with the standard refusal;
    ``refusal_gate=False`` turns it off."""
    if not opts.refusal_gate:
        return None
    if opts.refusal_threshold is not None:
        return (own[0] if own else REFUSAL, opts.refusal_threshold)
    return own


def fresh_tool_calls(conv: Messages, calls: list[ToolCall]) -> list[ToolCall]:
    """``calls`` without those the conversation's assistant turns already made (same name
    and arguments) and without repeats: a small model asked again tends to repeat a call
    whose result it was just given."""
    seen = {call_key(c["name"], c.get("arguments") or {}) for m in conv
            if m["role"] == "assistant" for c in m.get("tool_calls") or []}
    fresh = []
    for call in calls:
        key = call_key(call.name, call.arguments)
        if key not in seen:
            seen.add(key)
            fresh.append(call)
    return fresh


def text_answer_options(opts: Options) -> Options:
    """The options of the text answer that follows a tool decision with no fresh call:
    no tools, and the answer must not imitate a call (it stops at the call marker)."""
    return replace(opts, tools=[], tool_choice="none", stop=[*opts.stop, TOOL_CALL_OPEN])


def answer_with_tools(convs: list[Messages], experts: list[str | None], opts: Options,
                      run: Callable[[list[Messages], list[str | None], Options],
                                    list[Any]]) -> list[Any]:
    """The two passes of a call with tools bound, for any backend. ``run(convs, experts,
    opts)`` generates once (constrained to a list of calls while ``opts.tools`` is set,
    plain text otherwise) and returns one result per conversation.

    First the grammar-constrained list of calls. Under ``tool_choice="auto"`` each list
    loses the calls its conversation already made (:func:`fresh_tool_calls`); a conversation
    left with none is answered in text by a second pass without the tool instructions
    (:func:`text_answer_options`), whose usage adds the first pass's."""
    decided = run(convs, experts, opts)
    if opts.tool_choice != "auto":
        return decided
    text_rows = []
    for i, (conv, res) in enumerate(zip(convs, decided, strict=True)):
        res.tool_calls = fresh_tool_calls(conv, res.tool_calls)
        if not res.tool_calls:
            text_rows.append(i)
    if text_rows:
        texts = run([convs[i] for i in text_rows], [experts[i] for i in text_rows],
                    text_answer_options(opts))
        for i, res in zip(text_rows, texts, strict=True):
            res.prompt_tokens += decided[i].prompt_tokens
            res.completion_tokens += decided[i].completion_tokens
            decided[i] = res
    return decided


def grammar_for(grammars: Any, opts: Options) -> Any:
    """The compiled grammar a constrained call follows, from a
    :class:`~expertrag.models.structured.GrammarFactory`: the tool-call list, the JSON
    Schema, or any JSON object."""
    if opts.tools:
        return grammars.tool_calls(opts.tools, required=opts.tool_choice != "auto",
                                   parallel=opts.parallel_tool_calls)
    if opts.json_schema is not None:
        return grammars.json_schema(opts.json_schema)
    return grammars.json_object()
