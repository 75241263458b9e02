"""``ExpertDecisionModel``: expertrag's label probabilities as a LangChain decision model
(``langchain_core.decisions.BaseDecisionModel``, beta in langchain-core 1.8).

Conversion code only: LangChain questions (``Noul``, ``Choice``, ``Score``) and states
(text, JSON, messages) -> the core's :class:`expertrag.decisions.Question` and plain state;
the core's distributions -> ``NoulAnswer`` / ``ChoiceAnswer`` / ``ScoreAnswer``. Prompts,
batching and the shipped experts' preset questions live in :mod:`expertrag.decisions`.

Also here: :class:`DecisionEvaluator` and :class:`DecisionCritic`, which let CRAG and
Self-RAG use any ``BaseDecisionModel`` (a hosted one included) as their retrieval evaluator
and critic.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.decisions import (
    BaseDecisionModel,
    Box,
    Choice,
    ChoiceAnswer,
    ClassifierRequest,
    ClassifierResponse,
    Noul,
    NoulAnswer,
    NoulCriteria,
    Score,
    ScoreAnswer,
)
from langchain_core.messages import BaseMessage
from langchain_core.runnables import RunnableConfig
from pydantic import ConfigDict, Field, PrivateAttr

from expertrag.decisions import PRESETS, Decider, Decision, Question
from expertrag.errors import InputError
from expertrag.langchain.chat_models import to_core_messages
from expertrag.models.loading import DEFAULT_MODEL
from expertrag.reflection import ISREL, ISSUP, ISUSE, LABELS, RETRIEVE, Judgement

__all__ = [
    "DecisionCritic",
    "DecisionEvaluator",
    "ExpertDecisionModel",
    "critic_questions",
    "relevance_questions",
]

#: the key of a question's ``instructions`` (a JSON object) that names a preset
PRESET_KEY = "expertrag"


# ---------------------------------------------------------------------- preset questions
def _preset_question(name: str) -> Noul | Choice | Score:
    preset = PRESETS[name]
    instructions = {PRESET_KEY: name, "text": preset.text}
    if preset.kind == "noul":
        return Noul(instructions=instructions)
    if preset.kind == "choice":
        return Choice(instructions=instructions,
                      criteria=dict(zip(preset.labels, preset.criteria, strict=True)))
    return Score(instructions=instructions, criteria=list(preset.criteria))


def relevance_questions() -> dict[str, Noul]:
    """``{"relevant": Noul}``: is the passage relevant to the question, asked of the shipped
    ``relevance`` expert with its own prompt. State: ``{"question": ..., "passage": ...}``."""
    return {"relevant": _preset_question("relevance")}  # type: ignore[dict-item]


def critic_questions(*kinds: str) -> dict[str, Noul | Choice | Score]:
    """Self-RAG's reflection questions, asked of the shipped ``critic`` expert with its own
    prompts: ``retrieve`` (Noul), ``isrel`` (Noul), ``issup`` (Choice: fully / partially /
    no), ``isuse`` (Score: levels 0..4 are the grades 1..5); all four when none is named.
    State: ``{"question": ...}`` plus ``passage`` (isrel, issup) and ``answer`` (issup,
    isuse)."""
    kinds = kinds or (RETRIEVE, ISREL, ISSUP, ISUSE)
    unknown = [k for k in kinds if k not in (RETRIEVE, ISREL, ISSUP, ISUSE)]
    if unknown:
        raise InputError(f"no critic question {unknown}; one of retrieve, isrel, issup, isuse")
    return {k: _preset_question(k) for k in kinds}


# ---------------------------------------------------------------------- conversion
def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(content, ensure_ascii=False)


def _preset_name(question: Any) -> str | None:
    instructions = getattr(question, "instructions", None)
    if isinstance(instructions, dict) and PRESET_KEY in instructions:
        name = instructions[PRESET_KEY]
        if name not in PRESETS:
            raise InputError(f"unknown expertrag preset question {name!r}; one of "
                             f"{', '.join(PRESETS)}")
        return name
    return None


def to_core_question(qid: str, question: Any) -> Question:
    """A LangChain question -> the core's :class:`Question` (a Box is refused: the model
    reads text only)."""
    if isinstance(question, dict):
        from langchain_core.decisions import Question as LCQuestion
        from pydantic import TypeAdapter

        question = TypeAdapter(LCQuestion).validate_python(question)
    preset = _preset_name(question)
    if isinstance(question, Box):
        raise InputError(f"question {qid!r} is a Box: ExpertDecisionModel reads text only")
    if isinstance(question, Noul):
        if preset is not None:
            return Question("noul", preset=preset)
        criteria = question.criteria or NoulCriteria()
        return Question("noul", _content_text(question.instructions),
                        descriptions=(criteria.true, criteria.false))
    if isinstance(question, Choice):
        if preset is not None:
            if tuple(question.criteria) != PRESETS[preset].labels:
                raise InputError(f"question {qid!r} ({preset}) must keep the labels "
                                 f"{PRESETS[preset].labels}")
            return Question("choice", preset=preset)
        return Question("choice", _content_text(question.instructions),
                        labels=tuple(question.criteria),
                        descriptions=tuple(question.criteria.values()))
    if isinstance(question, Score):
        if preset is not None:
            if len(question.criteria) != len(PRESETS[preset].labels):
                raise InputError(f"question {qid!r} ({preset}) must keep its "
                                 f"{len(PRESETS[preset].labels)} levels")
            return Question("score", preset=preset)
        return Question("score", _content_text(question.instructions),
                        labels=tuple(c if isinstance(c, str) else json.dumps(c)
                                     for c in question.criteria))
    raise InputError(f"question {qid!r} is a {type(question).__name__}, not a Noul, Choice "
                     "or Score")


def to_core_state(state: Any) -> Any:
    """LangChain messages (at any depth) -> the core's message dicts; the rest as it is."""
    if isinstance(state, BaseMessage):
        return to_core_messages([state])[0]
    if isinstance(state, Mapping):
        return {str(k): to_core_state(v) for k, v in state.items()}
    if isinstance(state, Sequence) and not isinstance(state, str | bytes):
        if state and all(isinstance(m, BaseMessage) for m in state):
            return to_core_messages(list(state))
        return [to_core_state(v) for v in state]
    return state


def _answer(question: Any, dist: dict[str, float]) -> NoulAnswer | ChoiceAnswer | ScoreAnswer:
    if isinstance(question, Noul):
        return NoulAnswer(type="noul", noul=min(1.0, max(0.0, next(iter(dist.values())))))
    if isinstance(question, Choice):
        probs = dict(zip(question.criteria, dist.values(), strict=True))
        best = max(probs, key=lambda k: probs[k])
        return ChoiceAnswer(type="choice", choice=best, probabilities=probs,
                            confidence=min(1.0, probs[best]))
    levels = dict(enumerate(dist.values()))
    return ScoreAnswer(type="score", score=sum(i * p for i, p in levels.items()),
                       legend=dict(enumerate(question.criteria)), probabilities=levels,
                       confidence=min(1.0, max(levels.values())))


def _key(state: Any, questions: Mapping[str, Any]) -> str:
    dumped = {k: q.model_dump() if hasattr(q, "model_dump") else q for k, q in questions.items()}
    return json.dumps([to_core_state(state), dumped], sort_keys=True, default=str)


class _Precomputed:
    """The responses of one ``batch`` call, computed in one core call and picked up by each
    input's own run (so callbacks and tracing stay per input)."""

    def __init__(self, owner: ExpertDecisionModel, responses: dict[str, list[Any]]) -> None:
        self.owner = owner
        self.responses = responses
        self.lock = threading.Lock()

    def pop(self, key: str) -> ClassifierResponse | None:
        with self.lock:
            found = self.responses.get(key)
            return found.pop(0) if found else None


_PRECOMPUTED: contextvars.ContextVar[_Precomputed | None] = contextvars.ContextVar(
    "expertrag_decisions_batch", default=None)


# ---------------------------------------------------------------------- the model
class ExpertDecisionModel(BaseDecisionModel):
    """A local decision model: ``Noul``, ``Choice`` and ``Score`` questions answered from the
    label probabilities of one forward pass each (no generation, nothing parsed).

    >>> model = ExpertDecisionModel()                     # the embedded SmolLM2-135M base
    >>> model.invoke({"state": {"question": q, "passage": p},
    ...               "questions": relevance_questions()}).nouls["relevant"].noul
    >>> ExpertDecisionModel(expert="critic").invoke({"state": s, "questions": {...}})

    ``model`` is the base model and ``expert`` the expert that answers questions other than
    the presets (:func:`relevance_questions`, :func:`critic_questions`), which their own
    shipped expert answers. All questions of a request, and all requests of a ``batch``,
    sharing labels and expert go to the model as one batched call. Usage reports the prompt
    tokens read (``output_tokens`` 0: nothing is generated). A Choice's and a Score's
    ``confidence`` is the probability of the most probable label / level.
    """

    model_config = ConfigDict(populate_by_name=True, protected_namespaces=(),
                              arbitrary_types_allowed=True)

    model: str = DEFAULT_MODEL
    """Base model: an embedded alias, a local directory, a GGUF file or a hub id."""
    expert: str | None = None
    """The expert answering questions that are not presets (None = the bare base)."""
    experts: dict[str, str] = Field(default_factory=dict)
    """Expert name -> LoRA adapter folder, attached on first use."""
    batch_size: int = 16
    dtype: str | None = None
    device: str | None = None
    quantization: str | None = None
    client: Any = Field(default=None, exclude=True)
    """An :class:`~expertrag.models.ExpertModel` to use instead of the shared one."""

    _decider: Decider | None = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_core(cls, llm: Any, **kwargs: Any) -> ExpertDecisionModel:
        """Wrap an existing core model (custom loading, a server, tests)."""
        return cls(client=llm, model=llm.model_name, **kwargs)

    @property
    def _provider(self) -> str:
        return "expertrag"

    @property
    def decider(self) -> Decider:
        """The core :class:`~expertrag.decisions.Decider` (loads weights on first use)."""
        with self._lock:
            if self._decider is None:
                core = self.client
                if core is None:
                    from expertrag.models import ExpertLLM

                    opts = {"dtype": self.dtype, "device": self.device,
                            "quantization": self.quantization}
                    core = ExpertLLM.shared(self.model,
                                            **{k: v for k, v in opts.items() if v is not None})
                for name, path in self.experts.items():
                    if name not in core.experts:
                        core.add_expert(name, path)
                if self.expert is not None:
                    from expertrag.experts import ensure_attached

                    ensure_attached(core, self.expert)
                self._decider = Decider(core, expert=self.expert, batch_size=self.batch_size)
            return self._decider

    def _name(self) -> str:
        return f"{self.model}:{self.expert}" if self.expert else self.model

    def _core_request(self, state: Any, questions: Mapping[str, Any]
                      ) -> tuple[Any, dict[str, Question]]:
        if not questions:
            raise InputError("a decision request needs at least one question")
        return to_core_state(state), {qid: to_core_question(qid, q)
                                      for qid, q in questions.items()}

    def _response(self, questions: Mapping[str, Any], decision: Decision) -> ClassifierResponse:
        answers = {qid: _answer(q, decision.answers[qid]) for qid, q in questions.items()}
        tokens = decision.input_tokens
        return ClassifierResponse(
            model=self._name(), answers=answers,
            usage={"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens})

    def _classify(self, state: Any, questions: dict[str, Any]) -> ClassifierResponse:
        pending = _PRECOMPUTED.get()
        if pending is not None and pending.owner is self:
            found = pending.pop(_key(state, questions))
            if found is not None:
                return found
        decision = self.decider.decide([self._core_request(state, questions)])[0]
        return self._response(questions, decision)

    # -- batch: every request's questions in one core call
    def _precompute(self, inputs: list[Any]) -> _Precomputed | None:
        if len(inputs) < 2:
            return None
        try:
            requests = [(i["state"], dict(i["questions"])) for i in inputs]
            decisions = self.decider.decide([self._core_request(s, q) for s, q in requests])
        except Exception:
            return None  # a bad input: each input's own run reports it
        found: dict[str, list[Any]] = {}
        for (state, questions), decision in zip(requests, decisions, strict=True):
            found.setdefault(_key(state, questions), []).append(
                self._response(questions, decision))
        return _Precomputed(self, found)

    def batch(self, inputs: list[ClassifierRequest],
              config: RunnableConfig | list[RunnableConfig] | None = None, *,
              return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """LangChain's ``batch`` (a run per input), with all inputs' questions answered in
        one batched core call."""
        token = _PRECOMPUTED.set(self._precompute(list(inputs)))
        try:
            return super().batch(inputs, config, return_exceptions=return_exceptions, **kwargs)
        finally:
            _PRECOMPUTED.reset(token)

    async def abatch(self, inputs: list[ClassifierRequest],
                     config: RunnableConfig | list[RunnableConfig] | None = None, *,
                     return_exceptions: bool = False, **kwargs: Any) -> list[Any]:
        """Async :meth:`batch`."""
        pending = await asyncio.to_thread(self._precompute, list(inputs))
        token = _PRECOMPUTED.set(pending)
        try:
            return await super().abatch(inputs, config, return_exceptions=return_exceptions,
                                        **kwargs)
        finally:
            _PRECOMPUTED.reset(token)


# ---------------------------------------------------------------------- chain adapters
class DecisionEvaluator:
    """CRAG's retrieval evaluator from any ``BaseDecisionModel``: the score of a (question,
    passage) pair is the model's ``noul`` for :func:`relevance_questions` (an expertrag model
    asks the shipped ``relevance`` expert; another model reads the question's text). The
    chain's ``upper`` / ``lower`` thresholds apply to that probability; for a model other
    than the shipped expert, pick them with ``CorrectiveRAG.calibrate``."""

    name = "decision-model"

    def __init__(self, model: BaseDecisionModel,
                 questions: Mapping[str, Any] | None = None) -> None:
        self.model = model
        self.questions = dict(questions or relevance_questions())
        if len(self.questions) != 1 or not isinstance(next(iter(self.questions.values())),
                                                       Noul):
            raise InputError("DecisionEvaluator needs exactly one Noul question")
        self.qid = next(iter(self.questions))

    def score_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        if not pairs:
            return []
        requests = [{"state": {"question": q, "passage": p}, "questions": self.questions}
                    for q, p in pairs]
        return [r.nouls[self.qid].noul for r in self.model.batch(requests)]

    def score(self, query: str, texts: list[str]) -> list[float]:
        return self.score_pairs([(query, t) for t in texts])

    def __repr__(self) -> str:
        return f"DecisionEvaluator({type(self.model).__name__}(model={self.model.model!r}))"


class DecisionCritic:
    """Self-RAG's critic from any ``BaseDecisionModel``: the four judgements asked as
    :func:`critic_questions` (an expertrag model asks the shipped ``critic`` expert), their
    answers mapped onto the critic's labels: Retrieve / IsRel from the ``noul``, IsSup from
    the Choice's probabilities, IsUse from the Score's levels 0..4 (grades 1..5)."""

    def __init__(self, model: BaseDecisionModel) -> None:
        self.model = model
        self.questions = critic_questions()

    def judge(self, kind: str, items: Sequence[dict[str, str]]) -> list[Judgement]:
        if kind not in self.questions:
            raise InputError(f"unknown judgement {kind!r}")
        if not items:
            return []
        question = {kind: self.questions[kind]}
        requests = [{"state": {k: v for k, v in item.items()
                               if k in ("question", "passage", "answer") and v is not None},
                     "questions": question} for item in items]
        return [_judgement(kind, r.answers[kind]) for r in self.model.batch(requests)]


def _judgement(kind: str, answer: Any) -> Judgement:
    labels = LABELS[kind]
    if isinstance(answer, NoulAnswer):
        probs = {labels[0]: answer.noul, labels[1]: 1.0 - answer.noul}
    elif isinstance(answer, ChoiceAnswer):
        probs = {lab: float(answer.probabilities.get(lab, 0.0)) for lab in labels}
    elif isinstance(answer, ScoreAnswer):  # levels 0..4 are the grades 1..5
        probs = {lab: float(answer.probabilities.get(int(lab) - 1, 0.0)) for lab in labels}
    else:
        raise InputError(f"a {kind} judgement cannot come from a {type(answer).__name__}")
    total = sum(probs.values()) or 1.0
    return Judgement(kind, {lab: p / total for lab, p in probs.items()})
