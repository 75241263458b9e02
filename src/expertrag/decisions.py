"""Typed questions answered from label probabilities: one forward pass each, nothing parsed.

A question about a *state* (text, a JSON-like mapping, a message list) is one of three kinds,
the kinds of LangChain's decision models (``langchain_core.decisions``), here in plain
Python so that any skin can use them:

- ``noul``: a yes/no question; the answer is P(yes).
- ``choice``: one label among several; the answer is a distribution over the labels.
- ``score``: a level on an ordered rubric (levels 0..n-1); the answer is a distribution over
  the levels (and its expected level).

Each question becomes one prompt whose answer is read as the probability of each label's
first token (``label_probabilities``): no generation. Questions that share their labels and
expert go to the model as one batched call, across all states of a request.

*Presets* are the questions the shipped experts were trained on, asked with their own
prompts and labels (the state a mapping with ``question`` and, as the question needs,
``passage`` and ``answer``):

====================  ========  =========  ==================================================
preset                expert    kind       answered by
====================  ========  =========  ==================================================
``relevance``         relevance noul       :class:`~expertrag.rerank.llm.LLMReranker` (same
                                           prompt, labels, truncation, so the same scores)
``retrieve``          critic    noul       :class:`~expertrag.reflection.Critic` Retrieve
``isrel``             critic    noul       IsRel (relevant / irrelevant)
``issup``             critic    choice     IsSup (fully / partially / no)
``isuse``             critic    score      IsUse (levels 0..4 = grades 1..5)
====================  ========  =========  ==================================================
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from expertrag.errors import InputError

__all__ = ["PRESETS", "Decider", "Preset", "Question", "render_state"]

Kind = Literal["noul", "choice", "score"]
_MAX_LEVELS = 10  # score levels are read as the digits 0..9


@dataclass(frozen=True)
class Preset:
    """A question a shipped expert was trained on."""

    name: str
    expert: str
    kind: Kind
    labels: tuple[str, ...]       # the expert's labels (noul: positive first)
    needs: tuple[str, ...]        # state keys it reads
    text: str                     # the question in words (for people and for other models)
    criteria: tuple[Any, ...] = ()  # choice: label descriptions; score: level descriptions


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("relevance", "relevance", "noul", ("yes", "no"), ("question", "passage"),
           "Does the passage contain information that helps answer the question?"),
    Preset("retrieve", "critic", "noul", ("yes", "no"), ("question",),
           "Does answering this need facts looked up in documents?"),
    Preset("isrel", "critic", "noul", ("relevant", "irrelevant"), ("question", "passage"),
           "Is the passage relevant to the question?"),
    Preset("issup", "critic", "choice", ("fully", "partially", "no"),
           ("question", "passage", "answer"), "Is the answer supported by the passage?",
           ("Every claim of the answer is supported by the passage.",
            "Some of the answer is supported by the passage.",
            "The passage does not support the answer.")),
    Preset("isuse", "critic", "score", ("1", "2", "3", "4", "5"), ("question", "answer"),
           "How useful is the answer to the question?",
           ("1: useless", "2", "3", "4", "5: a complete answer")),
)}


@dataclass
class Question:
    """One question. ``labels``: a choice's label names, or a score's level descriptions
    (levels 0..n-1 in order); ``descriptions``: what each choice label (or, for a noul,
    yes and no) means; ``preset``: a name of :data:`PRESETS` (instructions and labels then
    come from the preset)."""

    kind: Kind
    instructions: str = ""
    labels: tuple[str, ...] = ()
    descriptions: tuple[Any, ...] = ()
    preset: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("noul", "choice", "score"):
            raise InputError(f"question kind must be noul, choice or score, not {self.kind!r}")
        if self.preset is not None:
            preset = PRESETS.get(self.preset)
            if preset is None:
                raise InputError(f"unknown preset question {self.preset!r}; one of "
                                 f"{', '.join(PRESETS)}")
            if preset.kind != self.kind:
                raise InputError(f"preset {self.preset!r} is a {preset.kind} question, "
                                 f"not a {self.kind}")
            return
        if not isinstance(self.instructions, str) or not self.instructions.strip():
            raise InputError("a question needs non-empty instructions")
        if self.kind == "choice" and (len(self.labels) < 1 or
                                      len(set(self.labels)) != len(self.labels)):
            raise InputError(f"a choice needs one or more distinct labels, got {self.labels!r}")
        if self.kind == "score" and not 2 <= len(self.labels) <= _MAX_LEVELS:
            raise InputError(f"a score needs 2 to {_MAX_LEVELS} levels, got {len(self.labels)}")

    def answer_labels(self) -> tuple[str, ...]:
        """The names the answer's distribution is keyed by: noul ("yes", "no"), choice its
        labels, score the levels "0".."n-1"; a preset its expert's labels."""
        if self.preset is not None:
            return PRESETS[self.preset].labels
        if self.kind == "noul":
            return ("yes", "no")
        if self.kind == "choice":
            return tuple(self.labels)
        return tuple(str(i) for i in range(len(self.labels)))


@dataclass
class Decision:
    """The answers to one request: ``answers[id]`` a distribution over the question's
    :meth:`Question.answer_labels` (summing to one); ``input_tokens`` the prompt tokens read."""

    answers: dict[str, dict[str, float]] = field(default_factory=dict)
    input_tokens: int = 0


# ---------------------------------------------------------------------------- prompts
_MEDIA = frozenset({"image", "image_url", "audio", "input_audio", "file", "video"})


def _check_text_only(value: Any) -> None:
    """Refuse media blocks (``{"type": "image", ...}``) anywhere in a state."""
    if isinstance(value, Mapping):
        if value.get("type") in _MEDIA:
            raise InputError(f"the state holds a {value['type']!r} block; this model reads "
                             "text only")
        for v in value.values():
            _check_text_only(v)
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        for v in value:
            _check_text_only(v)


def render_state(state: Any) -> str:
    """A state as prompt text: a string as it is; a message list as ``role: content``
    lines; a mapping of short strings as ``Key: value`` lines; anything else as JSON.
    Media blocks are refused."""
    _check_text_only(state)
    if isinstance(state, str):
        return state.strip()
    if _is_messages(state):
        return "\n".join(f"{m['role']}: {_text(m.get('content'))}" for m in state)
    if isinstance(state, Mapping) and all(isinstance(v, str) for v in state.values()):
        return "\n\n".join(f"{str(k).capitalize()}: {v.strip()}" for k, v in state.items())
    try:
        return json.dumps(state, ensure_ascii=False, indent=1, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise InputError(f"the state cannot be shown to the model: {exc}") from exc


def _json_default(value: Any) -> Any:
    if _is_message(value):
        return {"role": value["role"], "content": _text(value.get("content"))}
    raise TypeError(f"{type(value).__name__} is not JSON")


def _is_message(value: Any) -> bool:
    return isinstance(value, Mapping) and isinstance(value.get("role"), str) and \
        "content" in value


def _is_messages(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str) and bool(value) and \
        all(_is_message(m) for m in value)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, Mapping) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
            else:
                kind = block.get("type") if isinstance(block, Mapping) else type(block).__name__
                raise InputError(f"the state holds a {kind!r} block; this model is text-only")
        return "".join(parts)
    return json.dumps(content, ensure_ascii=False, default=str)


def _described(name: str, text: Any) -> str:
    if text is None or text == "":
        return name
    return f"{name}: {text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)}"


def _first_tokens_distinct(tokenizer: Any, labels: Sequence[str]) -> bool:
    firsts = []
    for label in labels:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        if not ids:
            return False
        firsts.append(ids[0])
    return len(set(firsts)) == len(firsts)


def _letters(n: int) -> tuple[str, ...]:
    return tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ"[:n])


def generic_prompt(question: Question, state_text: str,
                   tokenizer: Any) -> tuple[list[dict[str, str]], tuple[str, ...]]:
    """(the conversation, the answer words read) of a question that is not a preset. The
    answer words are ``yes``/``no``, a choice's labels (letters when two of them begin with
    the same token), or the digits of a score's levels."""
    lines = [state_text, "", question.instructions.strip()]
    if question.kind == "noul":
        yes, no = (*question.descriptions, None, None)[:2]
        if yes is not None:
            lines.append(_described("Yes means", yes))
        if no is not None:
            lines.append(_described("No means", no))
        lines.append("Answer yes or no.")
        words: tuple[str, ...] = ("yes", "no")
    elif question.kind == "choice":
        names = question.labels
        descriptions = (*question.descriptions, *(None,) * len(names))[:len(names)]
        if _first_tokens_distinct(tokenizer, names):
            words = tuple(names)
            lines.append("Options:")
            lines += [f"- {_described(n, d)}" for n, d in zip(names, descriptions, strict=True)]
            lines.append("Answer with one option's name: " + ", ".join(names) + ".")
        else:
            if len(names) > 26:
                raise InputError("a choice whose labels begin alike can have at most 26")
            words = _letters(len(names))
            lines.append("Options:")
            lines += [f"{w}. {_described(n, d)}"
                      for w, n, d in zip(words, names, descriptions, strict=True)]
            lines.append("Answer with the letter of one option.")
    else:
        n = len(question.labels)
        words = tuple(str(i) for i in range(n))
        lines.append("Levels:")
        lines += [f"{i}. {d if isinstance(d, str) else json.dumps(d, ensure_ascii=False)}"
                  for i, d in enumerate(question.labels)]
        lines.append(f"Answer with the number of one level, 0 to {n - 1}.")
    return [{"role": "user", "content": "\n".join(lines).strip()}], words


# ---------------------------------------------------------------------------- the decider
class Decider:
    """Answers :class:`Question` s about states from ``llm``'s label probabilities.

    ``expert``: the expert that answers questions that are not presets (None: the bare
    base); presets are answered by their own expert, attached from the shipped ones when
    ``llm`` lacks it. ``batch_size``: rows per forward pass.
    """

    def __init__(self, llm: Any, expert: str | None = None, batch_size: int = 16,
                 count_tokens: bool = True) -> None:
        self.llm = llm
        self.expert = expert
        self.batch_size = batch_size
        self.count_tokens = count_tokens
        self._reranker: Any = None
        self._critic: Any = None

    # -- the shipped experts' own scorers (built once, attaching on first use)
    def relevance_scorer(self) -> Any:
        if self._reranker is None:
            from expertrag.rerank.llm import LLMReranker

            self._reranker = LLMReranker.with_relevance_expert(self.llm,
                                                               batch_size=self.batch_size)
        return self._reranker

    def critic(self) -> Any:
        if self._critic is None:
            from expertrag.reflection import Critic

            self._critic = Critic.shipped(self.llm, batch_size=self.batch_size)
        return self._critic

    def _tokens(self, messages: list[dict[str, str]]) -> int:
        if not self.count_tokens:
            return 0
        return int(self.llm.count_tokens(self.llm.render(messages)))

    def decide(self, requests: Sequence[tuple[Any, Mapping[str, Question]]]) -> list[Decision]:
        """One :class:`Decision` per ``(state, {id: Question})``; every question of every
        request is asked in as few batched calls as their labels and experts allow."""
        out = [Decision() for _ in requests]
        generic: dict[tuple[tuple[str, ...], str | None], list[tuple[int, str, Any]]] = {}
        relevance: list[tuple[int, str, tuple[str, str]]] = []
        critic: dict[str, list[tuple[int, str, dict[str, str]]]] = {}
        for r, (state, questions) in enumerate(requests):
            if not questions:
                raise InputError(f"request {r} asks no question")
            text: str | None = None
            for qid, question in questions.items():
                if not isinstance(question, Question):
                    raise InputError(f"question {qid!r} is a {type(question).__name__}, "
                                     "not a Question")
                if question.preset is not None:
                    fields = _preset_fields(question.preset, state, qid)
                    if question.preset == "relevance":
                        relevance.append((r, qid, (fields["question"], fields["passage"])))
                    else:
                        critic.setdefault(question.preset, []).append((r, qid, fields))
                    continue
                text = render_state(state) if text is None else text
                messages, words = generic_prompt(question, text, self.llm.tokenizer)
                generic.setdefault((words, self.expert), []).append((r, qid, messages))
                out[r].answers[qid] = {}  # keeps the questions' order
                out[r].input_tokens += self._tokens(messages)
        for (words, expert), rows in generic.items():
            probs = self.llm.label_probabilities([m for _, _, m in rows], labels=words,
                                                 expert=expert, batch_size=self.batch_size)
            for (r, qid, _), row in zip(rows, probs, strict=True):
                names = requests[r][1][qid].answer_labels()
                total = sum(row[w] for w in words) or 1.0
                out[r].answers[qid] = {n: row[w] / total
                                       for n, w in zip(names, words, strict=True)}
        if relevance:
            scorer = self.relevance_scorer()
            scores = scorer.score_pairs([pair for _, _, pair in relevance])
            for (r, qid, pair), p in zip(relevance, scores, strict=True):
                out[r].answers[qid] = {"yes": float(p), "no": 1.0 - float(p)}
                out[r].input_tokens += self._tokens(scorer.messages(*pair))
        if critic:
            from expertrag.reflection import critic_messages

            judge = self.critic()
            for kind, rows in critic.items():
                for (r, qid, fields), judgement in zip(
                        rows, judge.judge(kind, [f for _, _, f in rows]), strict=True):
                    out[r].answers[qid] = {lab: judgement.probs[lab]
                                           for lab in PRESETS[kind].labels}
                    out[r].input_tokens += self._tokens(critic_messages(
                        kind, fields["question"], fields.get("passage"), fields.get("answer")))
        for r, (_, questions) in enumerate(requests):  # the request's question order
            out[r].answers = {qid: out[r].answers[qid] for qid in questions}
        return out


def _preset_fields(name: str, state: Any, qid: str) -> dict[str, str]:
    preset = PRESETS[name]
    if not isinstance(state, Mapping):
        raise InputError(f"question {qid!r} ({name}) needs a state mapping with "
                         f"{', '.join(preset.needs)}; got {type(state).__name__}")
    fields = {}
    for key in preset.needs:
        value = state.get(key)
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"question {qid!r} ({name}) needs a non-empty string "
                             f"state[{key!r}]")
        fields[key] = value
    return fields
