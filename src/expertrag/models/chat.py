"""Turn plain message lists into prompt strings with the model's own chat template.

Messages are dicts: ``{"role": "system"|"user"|"assistant"|"tool", "content": str}``, where an
assistant message may carry ``tool_calls`` (``[{"name", "arguments", "id"}]``) and a tool
message ``tool_call_id`` and ``name``. Templates that reject a role or an order (no system
role, strict alternation) get a compatible rewrite; models with no template get a plain one.
"""

from __future__ import annotations

import json
from typing import Any

from expertrag.errors import InputError
from expertrag.experts.card import MAX_BEAMS, check_num_beams  # noqa: F401 - re-exported
from expertrag.models.structured import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, render_tool_calls

ROLES = ("system", "user", "assistant", "tool")

FALLBACK_TEMPLATE = (
    "{% for m in messages %}### {{ m['role'] | capitalize }}:\n{{ m['content'] }}\n\n"
    "{% endfor %}{% if add_generation_prompt %}### Assistant:\n{% endif %}"
)


def tool_instructions(tools: list[dict[str, Any]]) -> str:
    """The system-prompt text that describes the tools and the call format."""
    specs = json.dumps(tools, ensure_ascii=False)
    return (
        "You decide which functions to call to answer the user's question. "
        "Call a function when it can help; fill its arguments from the question.\n\n"
        f"Available functions:\n<tools>{specs}</tools>\n\n"
        "Reply with the calls only, in exactly this format, with no other text:\n"
        f'{TOOL_CALL_OPEN}[{{"name": "function_name", "arguments": {{"arg": "value"}}}}]'
        f"{TOOL_CALL_CLOSE}\n"
        "If no function call is needed, reply with an empty list: "
        f"{TOOL_CALL_OPEN}[]{TOOL_CALL_CLOSE}"
    )


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check a message list and return normalised copies; errors name the bad message."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise InputError("messages must be a non-empty list of {'role', 'content'} dicts")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InputError(f"message {i} must be a dict, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in ROLES:
            raise InputError(f"message {i} has unknown role {role!r}; use one of {ROLES}")
        content = msg.get("content", "")
        if content is None:
            content = ""
        if not isinstance(content, str):
            raise InputError(f"message {i} content must be a string, got {type(content).__name__}")
        out.append({**msg, "content": content})
    return out


def _render_assistant(msg: dict[str, Any]) -> str:
    calls = render_tool_calls(msg["tool_calls"])
    return f"{msg['content']}\n{calls}" if msg["content"] else calls


def schema_instructions(schema: dict[str, Any]) -> str:
    """The system-prompt text for structured output (the grammar enforces it; showing the
    schema tells a small model what to put in the fields)."""
    if schema == {"type": "object"}:
        return "Reply with a single JSON object."
    return ("Reply with a single JSON value that matches this JSON Schema:\n"
            + json.dumps(schema, ensure_ascii=False))


def _plain(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
           json_schema: dict[str, Any] | None = None) -> list[dict]:
    """Messages as role/content pairs with tool calls and tool or schema instructions."""
    plain: list[dict[str, str]] = []
    for msg in messages:
        role, content = msg["role"], msg["content"]
        if role == "assistant" and msg.get("tool_calls"):
            content = _render_assistant(msg)
        elif role == "tool":
            name = msg.get("name") or "tool"
            status = " (error)" if msg.get("status") == "error" else ""
            content = f"Result of {name}{status}: {content}"
        plain.append({"role": role, "content": content})
    instructions = tool_instructions(tools) if tools else (
        schema_instructions(json_schema) if json_schema is not None else None)
    if instructions:
        if plain and plain[0]["role"] == "system":
            plain[0] = {"role": "system", "content": plain[0]["content"] + "\n\n" + instructions}
        else:
            plain.insert(0, {"role": "system", "content": instructions})
    return plain


def _compatible(plain: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rewrite for strict templates: system folded into the first user turn, tool results
    as user turns, consecutive same-role turns merged."""
    system = "\n\n".join(m["content"] for m in plain if m["role"] == "system")
    out: list[dict[str, str]] = []
    for m in plain:
        if m["role"] == "system":
            continue
        role = "user" if m["role"] == "tool" else m["role"]
        if out and out[-1]["role"] == role:
            out[-1]["content"] += "\n\n" + m["content"]
        else:
            out.append({"role": role, "content": m["content"]})
    if system:
        if out and out[0]["role"] == "user":
            out[0]["content"] = system + "\n\n" + out[0]["content"]
        else:
            out.insert(0, {"role": "user", "content": system})
    return out


def render_prompt(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    json_schema: dict[str, Any] | None = None,
    continue_final_message: bool = False,
) -> str:
    """The prompt string for `messages` under the tokenizer's chat template, with tool or
    JSON Schema instructions added to the system message. ``continue_final_message``: the
    last message is a partial assistant turn that generation continues (no end-of-turn)."""
    plain = _plain(validate_messages(messages), tools, json_schema)
    if continue_final_message and (not plain or plain[-1]["role"] != "assistant"):
        raise InputError("continue_final_message needs a final assistant message to continue")
    template = getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE
    options = {"add_generation_prompt": add_generation_prompt and not continue_final_message}
    if continue_final_message:
        options["continue_final_message"] = True
    try:
        return tokenizer.apply_chat_template(plain, tokenize=False, chat_template=template,
                                             **options)
    except Exception:
        return tokenizer.apply_chat_template(_compatible(plain), tokenize=False,
                                             chat_template=template, **options)
