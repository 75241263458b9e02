"""An expert's own prompt format, applied to the RAG prompts the frameworks write.

The ``grounded-qa`` expert is trained on expertrag's grounded prompt
(:func:`expertrag.rag.build_messages`: numbered passages, the question, the instruction to
cite them). Through a framework's own RAG prompt (LlamaIndex's text-QA template, LangChain
hub's ``rlm/rag-prompt``, a plain ``Context: ... Question: ...``) it gets the same passages
and question in words it was never trained on, and answers without citations.

:func:`reformat` recognises those prompts and rewrites them into the expert's format; a
conversation it does not recognise is returned unchanged. The chat skins call it for an
expert that has a format (:func:`format_of`) unless told not to (``expert_prompt=False``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from expertrag.experts.grounded_qa import INSTRUCTIONS, build_messages
from expertrag.types import Document

__all__ = [
    "PROMPT_FORMATS",
    "format_of",
    "parse_rag_prompt",
    "reformat",
    "split_passages",
]

Messages = list[dict[str, Any]]

#: format name -> ``(question, passages) -> messages``
PROMPT_FORMATS: dict[str, Callable[[str, Sequence[Document]], Messages]] = {
    "grounded": build_messages,
}
#: experts (by name, or by the recipe named in their card) trained on a format
_EXPERT_FORMATS = {"grounded-qa": "grounded"}

_FLAGS = re.DOTALL | re.IGNORECASE
# LlamaIndex's DEFAULT_TEXT_QA_PROMPT and CHAT_TEXT_QA_PROMPT (user turn)
_LLAMA_INDEX_QA = re.compile(
    r"^\s*Context information is below\.\s*\n-{3,}\n(?P<context>.*?)\n-{3,}\n"
    r"Given the context information and not prior knowledge, answer the (?:query|question)\.\s*"
    r"\n(?:Query|Question): (?P<question>.*?)\s*\nAnswer:\s*$", _FLAGS)
# LangChain hub's rlm/rag-prompt ("... Question: {question} \nContext: {context} \nAnswer:")
_QUESTION_THEN_CONTEXT = re.compile(
    r"(?:^|\n)\s*(?:Question|Query)\s*:\s*(?P<question>.*?)\s*\n\s*"
    r"(?:Context|Passages?|Documents?|Sources?)\s*:\s*(?P<context>.*?)\s*"
    r"(?:\n\s*(?:Answer|Helpful answer)\s*:\s*)?$", _FLAGS)
# "Context: {context}\n\nQuestion: {question}" and its variants
_CONTEXT_THEN_QUESTION = re.compile(
    r"(?:^|\n)\s*(?:Context|Passages?|Documents?|Sources?)\s*:\s*(?P<context>.*?)\s*\n\s*"
    r"(?:Question|Query)\s*:\s*(?P<question>.*?)\s*"
    r"(?:\n\s*(?:Answer|Helpful answer)\s*:\s*)?$", _FLAGS)
_PATTERNS = (_LLAMA_INDEX_QA, _CONTEXT_THEN_QUESTION, _QUESTION_THEN_CONTEXT)
# a block of LlamaIndex node metadata ("file_path: ...", one key per line, snake_case keys)
_METADATA_LINE = re.compile(r"^[a-z_][a-z0-9_]*: .*$")
_NUMBERED = re.compile(r"^\s*(?:\[\d+\]|\d+[.)]|Passage \d+:|Document \d+:)\s*", re.IGNORECASE)


def format_of(llm: Any, expert: str | None) -> str | None:
    """The prompt format ``expert`` was trained on (a key of :data:`PROMPT_FORMATS`), or
    None: from its card (``prompt_format``, else the recipe's name) or its name."""
    if not expert:
        return None
    card: dict[str, Any] = {}
    try:
        card = (llm.expert_info(expert) or {}).get("metadata") or {}
    except Exception:  # not attached (yet), or a backend that knows no cards
        card = {}
    named = card.get("prompt_format")
    if named in PROMPT_FORMATS:
        return named
    recipe = card.get("recipe") if isinstance(card.get("recipe"), dict) else {}
    for key in (recipe.get("name"), card.get("name"), expert):
        if key in _EXPERT_FORMATS:
            return _EXPERT_FORMATS[key]
    return None


def split_passages(context: str) -> list[str]:
    """The passages of a context block: paragraphs (blank-line separated); a block of
    LlamaIndex node metadata (``file_path: ...``) is dropped, and ``[n]`` / ``1.`` numbering
    removed (the expert's format numbers them again)."""
    blocks = [b.strip() for b in re.split(r"\n\s*\n", context.strip()) if b.strip()]
    out = []
    for i, block in enumerate(blocks):
        lines = block.splitlines()
        if i + 1 < len(blocks) and all(_METADATA_LINE.match(line) for line in lines):
            continue
        out.append(_NUMBERED.sub("", block, count=1).strip())
    return [p for p in out if p]


def parse_rag_prompt(messages: Sequence[dict[str, Any]]) -> tuple[str, list[str]] | None:
    """``(question, passages)`` when ``messages`` is one RAG prompt it recognises (an optional
    system turn and one user turn), else None."""
    turns = [m for m in messages if m.get("role") != "system"]
    if len(turns) != 1 or turns[0].get("role") != "user" or "tool_calls" in turns[0]:
        return None
    text = turns[0].get("content")
    if not isinstance(text, str) or INSTRUCTIONS in text:
        return None  # already in expertrag's format
    for pattern in _PATTERNS:
        match = pattern.search(text)
        if match:
            question = " ".join(match.group("question").split())
            passages = split_passages(match.group("context"))
            if question and passages:
                return question, passages
    return None


def reformat(messages: Messages, fmt: str | None) -> Messages:
    """``messages`` in format ``fmt`` when they hold a recognised RAG prompt; otherwise (or
    when ``fmt`` is None) ``messages`` unchanged."""
    if fmt is None:
        return messages
    parsed = parse_rag_prompt(messages)
    if parsed is None:
        return messages
    question, passages = parsed
    return PROMPT_FORMATS[fmt](question, [Document(p) for p in passages])
