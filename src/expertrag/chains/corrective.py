"""Corrective RAG (CRAG, Yan et al. 2024) on one small base with its LoRA experts, offline.

1. Retrieve ``k`` documents; a retrieval evaluator (any expertrag :class:`Reranker`; by default
   the ``relevance`` expert, P(yes) from one forward pass) scores each (question, document).
2. Action: **Correct** when some document scores >= ``upper``, **Incorrect** when all score
   < ``lower``, else **Ambiguous**. The thresholds come from a calibration run
   (:meth:`CorrectiveRAG.calibrate`) and are saved with the config.
3. Knowledge refinement (decompose, then recompose): documents scoring >= ``doc_floor``
   (default ``lower``) are cut into strips (sentence groups, word windows or whole passages),
   all strips are scored by the same evaluator in one batched pass, the best ones at or above
   ``strip_floor`` are kept and joined back per source document, in retrieval order or by
   score (``order``). With ``select="pair"`` the strips after the best one are ranked by
   what they add to it: each is scored again read together with the best strip, so the
   second hop of a multi-hop question, which the question alone rates low, can rise.
   Every recomposed passage keeps the id and metadata of its source document, so the
   answer's citations resolve to it.
4. External knowledge on Incorrect (instead of the internal documents) and Ambiguous (beside
   them): a pluggable second source queried with a rewritten query (at most three keywords,
   without the LLM by default), refined the same way. With no external source, Incorrect ends
   in an honest refusal with the action recorded, never an answer from documents judged
   irrelevant.
5. Generation with the ``grounded-qa`` expert (or any expert, or the base), with citations.

Every decision is a probability read from a forward pass, so nothing can fail to parse.
:meth:`CorrectiveRAG.answer_many` batches the evaluator and the generator across questions.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from expertrag.chains.base import (
    ChainError,
    Listener,
    Retrieve,
    Trace,
    as_retrieve,
    call_source,
    check_question,
    check_questions,
    grounded_outcome,
    keywords,
    stream_answer,
)
from expertrag.config import ConfigMixin
from expertrag.errors import InputError
from expertrag.experts import GROUNDED_QA, ensure_attached
from expertrag.experts.grounded_qa import (
    REFUSAL,
    build_messages,
)
from expertrag.types import Document

CORRECT, INCORRECT, AMBIGUOUS = "correct", "incorrect", "ambiguous"
ACTIONS = (CORRECT, INCORRECT, AMBIGUOUS)
STRIP_MODES = ("sentences", "words", "passage")
ORDERS = ("retrieval", "best-first", "best-last")
SELECT_MODES = ("score", "pair")
REWRITE_MODES = ("keywords", "llm", "none")

_SENTENCE_RE = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])|\n\s*\n|\n(?=\s*[#*-])")


# `upper`: `python benchmarks/calibrate_crag.py --data-dir ../shared/data` (2026-12-04,
# relevance v2; figures in benchmarks/RESULTS.md): 100 questions, top-4 of their own
# paragraphs, gold removed from half; "has the answer" = a gold paragraph is among the four.
# `lower`: Incorrect means "discard the retrieval" and, with no external source, refuse; the
# action-accuracy floor of that slice (0.9527) refused 63% of the answerable MuSiQue test
# questions and lost to naive RAG on F1. It is now the evidence floor chosen on the answer
# benchmark's mixed calibration split (`bench_answers.py --calibrate-evidence grounded-qa`:
# the same evaluator on the same top-5 passages, false refusals <= 5% on every set).
SHIPPED_CALIBRATION: dict[str, Any] = {
    "upper": 0.99, "lower": 0.2881, "precision": 0.9, "n": 100, "with_answer": 49,
    "decided_accuracy": 0.9125, "ambiguous_share": 0.2, "binary_accuracy": 0.83,
    "best_single_threshold": 0.9828, "best_balanced_accuracy": 0.86,
    "evaluator": "LLMReranker(llm='smollm2-135m-instruct', expert='relevance')",
    "data": "HotpotQA test items 400-499, k=4",
    "lower_data": "bench_answers calibration split (squad2 60, hotpotqa-distractor 60, "
                  "hotpotqa-open 60, musique-open 24), top-5 hybrid-retrieved passages",
    "lower_action_accuracy": 0.9527,
}


@dataclass
class CRAGConfig(ConfigMixin):
    """Settings of a :class:`CorrectiveRAG` chain; saved and loaded as JSON
    (:class:`~expertrag.config.ConfigMixin`).

    The default ``upper`` is calibrated for the shipped ``relevance`` expert by
    ``benchmarks/calibrate_crag.py`` on HotpotQA test items 400-499 (never used by the
    benchmarks' answer sets) at 0.9 precision for Correct; ``lower`` on the answer benchmark's
    mixed calibration split, for answers rather than actions (false refusals <= 5% on every
    set); the record is :data:`SHIPPED_CALIBRATION`. ``calibrate(items)`` picks them for
    another evaluator or your own data and ``calibration`` records how.
    """

    upper: float = SHIPPED_CALIBRATION["upper"]
    lower: float = SHIPPED_CALIBRATION["lower"]
    k: int = 4
    # Refinement defaults chosen for answer accuracy by benchmarks/tune_crag.py on the
    # calibration slice (HotpotQA test 400-499, k=5): every retrieved document is a
    # candidate, the best 3 whole passages are kept, in retrieval order. Sentence strips, all
    # five passages and best-first or best-last order did worse (a 135M generator needs the
    # bridge passage of a multi-hop question, which the evaluator scores low); the figures
    # are in benchmarks/RESULTS.md ("CRAG's refinement defaults").
    strips: str = "passage"
    strip_sentences: int = 3
    strip_words: int = 50
    strip_floor: float | None = 0.0  # None: the same as ``lower``
    # documents refined on Correct / Ambiguous: those scoring >= doc_floor (None: ``lower``)
    doc_floor: float | None = 0.0
    max_strips: int = 3
    # how the strips after the best one are chosen: "score" (the evaluator's score for each
    # strip alone) or "pair" (logit of that score + logit of the strip's score read together
    # with the best strip; one more evaluator row per candidate strip). Pair-aware selection
    # is meant with ``max_strips=2``: the best strip and its best partner (see
    # benchmarks/crag_contexts.py and its figures in benchmarks/RESULTS.md).
    select: str = "score"
    # recomposed passages in retrieval order, or by evaluator score: "best-first" or
    # "best-last" (the best passage next to the question)
    order: str = "retrieval"
    external_k: int = 3
    # External sources here return passage-sized chunks: whole passages keep both hops of a
    # multi-hop answer (recovered more than sentence strips: benchmarks/RESULTS.md).
    # Set "sentences" or "words" for a source that returns long pages; None: as ``strips``.
    external_strips: str | None = "passage"
    rewrite: str = "keywords"
    expert: str | None = GROUNDED_QA
    max_new_tokens: int = 64
    external_timeout: float | None = 30.0
    calibration: dict[str, Any] | None = field(
        default_factory=lambda: dict(SHIPPED_CALIBRATION))

    def validate(self) -> CRAGConfig:
        if not (0 <= self.lower <= self.upper) or not math.isfinite(self.upper):
            raise InputError(f"need 0 <= lower <= upper, got lower={self.lower}, "
                             f"upper={self.upper}")
        for name in ("k", "strip_sentences", "strip_words", "max_strips", "external_k",
                     "max_new_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.strips not in STRIP_MODES:
            raise InputError(f"strips must be one of {STRIP_MODES}, got {self.strips!r}")
        if self.external_strips is not None and self.external_strips not in STRIP_MODES:
            raise InputError(f"external_strips must be one of {STRIP_MODES} or None, got "
                             f"{self.external_strips!r}")
        if self.order not in ORDERS:
            raise InputError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.select not in SELECT_MODES:
            raise InputError(f"select must be one of {SELECT_MODES}, got {self.select!r}")
        for name in ("strip_floor", "doc_floor"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float))
                                          and math.isfinite(value)):
                raise InputError(f"{name} must be a finite number or None, got {value!r}")
        if self.rewrite not in REWRITE_MODES:
            raise InputError(f"rewrite must be one of {REWRITE_MODES}, got {self.rewrite!r}")
        if self.external_timeout is not None and self.external_timeout <= 0:
            raise InputError(f"external_timeout must be > 0 or None, got "
                             f"{self.external_timeout!r}")
        return self

    @property
    def floor(self) -> float:
        return self.lower if self.strip_floor is None else self.strip_floor

    @property
    def refine_floor(self) -> float:
        return self.lower if self.doc_floor is None else self.doc_floor


@dataclass
class Strip:
    """A piece of a source document and its evaluator score."""

    text: str
    source: int  # index of the source document in the chain's document list
    index: int  # position within the source document
    score: float = float("nan")
    external: bool = False
    joint: float | None = None  # score read together with the best strip (select="pair")


@dataclass
class CorrectedContext:
    """What the corrected-context stage produced for one question."""

    question: str
    action: str
    documents: list[Document]  # the retrieved internal documents, with evaluator scores
    scores: list[float]
    strips: list[Strip]
    passages: list[Document]  # the recomposed context handed to the generator
    rewritten_query: str | None = None
    external_documents: list[Document] = field(default_factory=list)
    external_error: str | None = None


@dataclass
class CRAGResult:
    """An answer with its citations, the action taken and the evidence behind it."""

    question: str
    answer: str
    citations: list[Document]
    action: str
    context: CorrectedContext
    refused: bool
    seconds: dict[str, float]
    calls: dict[str, int]
    expert: str | None = None

    @property
    def forward_calls(self) -> int:
        return sum(v for k, v in self.calls.items() if not k.endswith("_tokens"))


def split_strips(text: str, mode: str = "sentences", sentences: int = 3,
                 words: int = 50) -> list[str]:
    """Cut ``text`` into strips: groups of ``sentences`` sentences, windows of ``words``
    words, or the whole passage. Strips cover the text in order; none is empty."""
    if mode not in STRIP_MODES:
        raise InputError(f"strip mode must be one of {STRIP_MODES}, got {mode!r}")
    text = text.strip()
    if not text:
        return []
    if mode == "passage":
        return [text]
    if mode == "words":
        tokens = text.split()
        return [" ".join(tokens[i:i + words]) for i in range(0, len(tokens), words)]
    parts = [p.strip() for p in _SENTENCE_RE.split(text) if p and p.strip()]
    return [" ".join(parts[i:i + sentences]) for i in range(0, len(parts), sentences)]


def logit(p: float) -> float:
    """log(p / (1 - p)), with p clipped to [1e-6, 1 - 1e-6] so 0 and 1 stay finite."""
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def joint_text(best: str, other: str) -> str:
    """What pair-aware selection scores: a candidate strip read after the best one."""
    return best + "\n" + other


def ranked_strips(strips: Sequence[Strip], floor: float, select: str = "score",
                  limit: int | None = None) -> list[Strip]:
    """The best ``limit`` strips scoring >= ``floor``, best first. ``select="score"`` ranks
    them by their own score; ``"pair"`` keeps the best first and ranks the rest by
    logit(own score) + logit(``joint``), their score read together with the best (ties:
    the given order). Joint scores are only needed when more than ``limit`` pass."""
    passing = sorted((s for s in strips if s.score >= floor), key=lambda s: -s.score)
    if limit is None:
        limit = len(passing)
    if select == "pair" and len(passing) > limit:
        rest = passing[1:]
        missing = next((s for s in rest if s.joint is None), None)
        if missing is not None:
            raise InputError(f"pair-aware selection needs every candidate's joint score; "
                             f"strip {missing.index} of source {missing.source} has none")
        rest.sort(key=lambda s: -(logit(s.score) + logit(s.joint)))  # type: ignore[arg-type]
        passing = [passing[0], *rest]
    return passing[:limit]


def decide(scores: Sequence[float], upper: float, lower: float) -> str:
    """CRAG's action for one question's document scores."""
    if not scores:
        return INCORRECT
    best = max(scores)
    if best >= upper:
        return CORRECT
    if best < lower:
        return INCORRECT
    return AMBIGUOUS


def calibrate_thresholds(max_scores: Sequence[float], has_answer: Sequence[bool],
                         precision: float = 0.9) -> dict[str, Any]:
    """``upper`` / ``lower`` for labelled questions (each: its best document score and whether
    the answer is among its documents). ``upper`` is the lowest threshold above which at
    least ``precision`` of the questions hold the answer (Correct is then trustworthy);
    ``lower`` the highest below which at least ``precision`` do not (Incorrect is); between
    them lies Ambiguous. When the two cross, both are the threshold of best balanced
    accuracy. Returns the thresholds and the figures they give on the data."""
    pairs = sorted(zip((float(s) for s in max_scores), (bool(h) for h in has_answer),
                       strict=True))
    if not pairs:
        raise InputError("calibration needs at least one labelled question")
    if all(h for _, h in pairs) or not any(h for _, h in pairs):
        raise InputError("calibration needs questions with and without the answer")
    values = sorted({s for s, _ in pairs})
    cuts = [values[0] - 1e-9, *[(a + b) / 2 for a, b in itertools.pairwise(values)],
            values[-1] + 1e-9]

    def above(t: float) -> list[bool]:
        return [h for s, h in pairs if s >= t]

    def below(t: float) -> list[bool]:
        return [h for s, h in pairs if s < t]

    upper = next((t for t in cuts if above(t) and sum(above(t)) / len(above(t)) >= precision),
                 cuts[-1])
    lower = next((t for t in reversed(cuts)
                  if below(t) and sum(not h for h in below(t)) / len(below(t)) >= precision),
                 cuts[0])
    n_pos = sum(h for _, h in pairs)
    n_neg = len(pairs) - n_pos

    def balanced(t: float) -> float:
        tp = sum(h for h in above(t))
        tn = sum(not h for h in below(t))
        return 0.5 * (tp / n_pos + tn / n_neg)

    best = max(cuts, key=balanced)
    if lower > upper:
        lower = upper = best
    upper, lower = max(0.0, upper), max(0.0, lower)
    actions = [decide([s], upper, lower) for s, _ in pairs]
    right = [(a == CORRECT and h) or (a == INCORRECT and not h) for a, (_, h) in zip(
        actions, pairs, strict=True)]
    decided = [r for r, a in zip(right, actions, strict=True) if a != AMBIGUOUS]
    # as a yes/no call, Ambiguous keeps the internal documents: it sides with "present"
    binary = [(a != INCORRECT) == h for a, (_, h) in zip(actions, pairs, strict=True)]
    return {"upper": round(upper, 4), "lower": round(lower, 4), "precision": precision,
            "n": len(pairs), "with_answer": n_pos,
            "decided_accuracy": sum(decided) / len(decided) if decided else float("nan"),
            "ambiguous_share": actions.count(AMBIGUOUS) / len(actions),
            "binary_accuracy": sum(binary) / len(binary),
            "best_single_threshold": round(best, 4),
            "best_balanced_accuracy": balanced(best)}


@dataclass
class CRAGState:
    """The corrected context of several questions between two stages (see
    :meth:`CorrectiveRAG.stage_retrieve` and the stages after it)."""

    questions: list[str]
    retrieved: list[list[Document]]
    scores: list[list[float]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)
    docs_scored: list[list[Document]] = field(default_factory=list)
    strips: list[list[Strip]] = field(default_factory=list)
    rewritten: dict[int, str] = field(default_factory=dict)
    external: dict[int, list[Document]] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    ext_strips: dict[int, list[Strip]] = field(default_factory=dict)


class CorrectiveRAG:
    """CRAG over ``retriever`` (any source, see :mod:`expertrag.chains.base`), answering with
    ``llm`` (an :class:`~expertrag.models.ExpertLLM`).

    ``evaluator``: an expertrag :class:`~expertrag.rerank.Reranker` (default: the shipped
    ``relevance`` expert through ``LLMReranker.with_relevance_expert(llm)``).
    ``external``: the second source for Incorrect / Ambiguous (None: refuse on Incorrect).
    """

    def __init__(self, llm: Any, retriever: Any, evaluator: Any = None, external: Any = None,
                 config: CRAGConfig | None = None) -> None:
        self.llm = llm
        self._retrieve: Retrieve = as_retrieve(retriever)
        self._external: Retrieve | None = (None if external is None
                                           else as_retrieve(external, "external source"))
        self.config = (config or CRAGConfig()).validate()
        if evaluator is None:
            from expertrag.rerank.llm import LLMReranker

            evaluator = LLMReranker.with_relevance_expert(llm)
        if not callable(getattr(evaluator, "score_pairs", None)):
            raise InputError("evaluator must be an expertrag Reranker (score_pairs)")
        self.evaluator = evaluator
        if self.config.expert == GROUNDED_QA:
            ensure_attached(llm, GROUNDED_QA)

    # ------------------------------------------------------------------ stages
    def _score(self, pairs: list[tuple[str, str]], trace: Trace, stage: str) -> list[float]:
        if not pairs:
            return []
        with trace.stage(stage):
            scores = [float(s) for s in self.evaluator.score_pairs(pairs)]
        trace.count("evaluator", len(pairs))
        return scores

    def _strips(self, docs: Sequence[Document], keep: Sequence[int],
                external: bool = False) -> list[Strip]:
        cfg = self.config
        mode = (cfg.external_strips or cfg.strips) if external else cfg.strips
        out = []
        for i in keep:
            for j, text in enumerate(split_strips(docs[i].text, mode,
                                                  cfg.strip_sentences, cfg.strip_words)):
                out.append(Strip(text, i, j, external=external))
        return out

    def _recompose(self, docs: Sequence[Document], strips: list[Strip],
                   scores_by_doc: Sequence[float], fallback: bool = True) -> list[Document]:
        """The kept strips (best first, at most ``max_strips``, each >= the floor) joined per
        source document, in retrieval order (or by score, see ``order``). When no strip
        passes and ``fallback``, keep every strip of the best document, so the generator
        always has context (internal documents were judged relevant enough as a whole;
        external ones are all there is on Incorrect). External documents beside internal
        context get no fallback: a document below the floor would only add noise there."""
        cfg = self.config
        kept = ranked_strips(strips, cfg.floor, cfg.select, cfg.max_strips)
        if not kept and strips and fallback:
            def doc_score(s: Strip) -> float:
                return scores_by_doc[s.source] if s.source < len(scores_by_doc) \
                    and scores_by_doc[s.source] == scores_by_doc[s.source] else s.score

            best = max(strips, key=lambda s: (doc_score(s), -s.source)).source
            kept = [s for s in strips if s.source == best]
        sources = sorted({s.source for s in kept})
        if cfg.order != "retrieval":
            top = {i: max(s.score for s in kept if s.source == i) for i in sources}
            sources.sort(key=lambda i: -top[i])
            if cfg.order == "best-last":
                sources.reverse()
        passages = []
        for i in sources:
            mine = sorted((s for s in kept if s.source == i), key=lambda s: s.index)
            doc = docs[i]
            meta = {**doc.metadata, "crag_source": i, "crag_strips": [s.index for s in mine],
                    "crag_score": scores_by_doc[i] if i < len(scores_by_doc) else None,
                    "external": mine[0].external}
            passages.append(Document(text=" ".join(s.text for s in mine), id=doc.id,
                                     metadata=meta, score=max(s.score for s in mine)))
        return passages

    def _rewrite(self, questions: list[str], trace: Trace) -> list[str]:
        mode = self.config.rewrite
        if mode == "none":
            return list(questions)
        if mode == "keywords":
            return [keywords(q) for q in questions]
        schema = {"type": "object", "properties": {"keywords": {
            "type": "array", "items": {"type": "string", "maxLength": 40},
            "minItems": 1, "maxItems": 3}}, "required": ["keywords"]}
        convs = [[{"role": "user", "content": (
            "Give at most three search keywords for finding the answer to this question on "
            f"the web.\nQuestion: {q}")}] for q in questions]
        with trace.stage("rewrite"):
            results = self.llm.generate(convs, json_schema=schema, max_new_tokens=40)
        trace.count("rewriter", len(convs))
        out = []
        for q, r in zip(questions, results, strict=True):
            words = [w.strip() for w in (r.parsed or {}).get("keywords", []) if w.strip()]
            out.append(" ".join(words[:3]) or keywords(q))
        return out

    # ------------------------------------------------------------------ corrected context
    # The corrected context is built in stages, each a method over a CRAGState (for several
    # questions at once): retrieve, grade, refine, external, assemble. _correct_many runs them
    # in order; the LlamaIndex workflow runs each as a step of its own.
    def stage_retrieve(self, questions: list[str], trace: Trace) -> CRAGState:
        """Retrieve ``k`` documents per question."""
        with trace.stage("retrieve"):
            retrieved = [call_source(self._retrieve, q, self.config.k, "retriever")
                         for q in questions]
        return CRAGState(questions=list(questions), retrieved=retrieved)

    def stage_grade(self, state: CRAGState, trace: Trace) -> CRAGState:
        """Score every (question, document) pair in one batched pass; decide the actions."""
        cfg = self.config
        questions, retrieved = state.questions, state.retrieved
        pairs = [(q, d.text) for q, docs in zip(questions, retrieved, strict=True) for d in docs]
        flat = iter(self._score(pairs, trace, "evaluate"))
        state.scores = [[next(flat) for _ in docs] for docs in retrieved]
        state.actions = [decide(s, cfg.upper, cfg.lower) for s in state.scores]
        trace.emit("actions", questions=questions, scores=state.scores, actions=state.actions)
        state.docs_scored = [[replace(d, score=s, metadata={**d.metadata, "crag_score": s})
                              for d, s in zip(docs, sc, strict=True)]
                             for docs, sc in zip(retrieved, state.scores, strict=True)]
        return state

    def stage_refine(self, state: CRAGState, trace: Trace) -> CRAGState:
        """Internal knowledge: split the documents at or above the refine floor (Correct /
        Ambiguous) into strips and score them."""
        cfg = self.config
        state.strips = [
            self._strips(docs, [i for i, s in enumerate(sc) if s >= cfg.refine_floor])
            if act != INCORRECT else []
            for docs, sc, act in zip(state.docs_scored, state.scores, state.actions,
                                     strict=True)]
        self._score_strips(state.questions, state.strips, state.scores, trace)
        return state

    def stage_external(self, state: CRAGState, trace: Trace) -> CRAGState:
        """External knowledge for Incorrect (instead) and Ambiguous (beside): rewrite the
        query, search, split and score the strips."""
        cfg, questions = self.config, state.questions
        wants = [i for i, a in enumerate(state.actions) if a != CORRECT and self._external]
        if wants:
            for i, query in zip(wants, self._rewrite([questions[i] for i in wants], trace),
                                strict=True):
                state.rewritten[i] = query
                try:
                    with trace.stage("external"):
                        state.external[i] = call_source(self._external, query,
                                                        cfg.external_k, "external source",
                                                        cfg.external_timeout)
                except ChainError as exc:  # recorded; the question goes on without it
                    state.errors[i] = str(exc)
                    state.external[i] = []
        state.ext_strips = {i: self._strips(docs, range(len(docs)), external=True)
                            for i, docs in state.external.items()}
        order = sorted(state.ext_strips)
        self._score_strips([questions[i] for i in order],
                           [state.ext_strips[i] for i in order],
                           [[float("nan")] * len(state.external[i]) for i in order], trace)
        return state

    def stage_assemble(self, state: CRAGState, trace: Trace) -> list[CorrectedContext]:
        """Select the strips (pair-aware when ``select="pair"``) and recompose them into
        each question's passages."""
        questions, strips, ext_strips = state.questions, state.strips, state.ext_strips
        order = sorted(ext_strips)
        if self.config.select == "pair":
            self._score_joint([*questions, *(questions[i] for i in order)],
                              [*strips, *(ext_strips[i] for i in order)], trace)
        out = []
        for i, question in enumerate(questions):
            passages = self._recompose(state.docs_scored[i], strips[i], state.scores[i]) \
                if strips[i] else []
            if ext_strips.get(i):
                passages += self._recompose(state.external[i], ext_strips[i], [],
                                            fallback=not passages)
            out.append(CorrectedContext(
                question=question, action=state.actions[i], documents=state.docs_scored[i],
                scores=state.scores[i], strips=strips[i] + ext_strips.get(i, []),
                passages=passages, rewritten_query=state.rewritten.get(i),
                external_documents=state.external.get(i, []),
                external_error=state.errors.get(i)))
        return out

    def _correct_many(self, questions: list[str], trace: Trace) -> list[CorrectedContext]:
        state = self.stage_retrieve(questions, trace)
        for stage in (self.stage_grade, self.stage_refine, self.stage_external):
            state = stage(state, trace)
        return self.stage_assemble(state, trace)

    def _score_strips(self, questions: list[str], strips: list[list[Strip]],
                      doc_scores: list[list[float]], trace: Trace) -> None:
        """Score every strip of every question in one batched pass (whole-passage strips of
        scored documents reuse the document's score)."""
        todo = []
        for q, mine, sc in zip(questions, strips, doc_scores, strict=True):
            for s in mine:
                if self.config.strips == "passage" and not s.external and s.source < len(sc):
                    s.score = sc[s.source]
                else:
                    todo.append((q, s))
        for (_, s), value in zip(todo, self._score([(q, s.text) for q, s in todo], trace,
                                                   "refine"), strict=True):
            s.score = value

    def _score_joint(self, questions: list[str], strips: list[list[Strip]],
                     trace: Trace) -> None:
        """Pair-aware selection: score every strip that could join the best one of its
        question read together with it (best text, newline, strip text), in one batched
        pass. Only needed where more than ``max_strips`` pass the floor: otherwise all are
        kept whatever the order."""
        todo = []
        for q, mine in zip(questions, strips, strict=True):
            passing = ranked_strips(mine, self.config.floor)
            if len(passing) > self.config.max_strips:
                best = passing[0]
                todo += [(q, best, s) for s in passing[1:]]
        pairs = [(q, joint_text(best.text, s.text)) for q, best, s in todo]
        for (_, _, s), value in zip(todo, self._score(pairs, trace, "pair"), strict=True):
            s.joint = value

    def correct(self, question: str, listener: Listener | None = None) -> CorrectedContext:
        """Retrieval, evaluation, refinement and external knowledge, without generation."""
        return self._correct_many([check_question(question)], Trace(listener=listener))[0]

    def correct_many(self, questions: Sequence[str],
                     listener: Listener | None = None) -> list[CorrectedContext]:
        checked = check_questions(questions)
        return self._correct_many(checked, Trace(listener=listener)) if checked else []

    # ------------------------------------------------------------------ answers
    def answer(self, question: str, listener: Listener | None = None) -> CRAGResult:
        return self.answer_many([check_question(question)], listener)[0]

    def answer_many(self, questions: Sequence[str],
                    listener: Listener | None = None) -> list[CRAGResult]:
        """Answer several questions; evaluator and generator calls are batched across them.
        Seconds and calls in each result are the batch's shared evenly. ``listener`` hears
        the stages (see :class:`~expertrag.chains.base.Trace`)."""
        checked = check_questions(questions)
        if not checked:
            return []
        trace = Trace(listener=listener)
        contexts = self._correct_many(checked, trace)
        todo = [i for i, c in enumerate(contexts) if c.passages]
        texts: dict[int, Any] = {}
        if todo:
            convs = [build_messages(contexts[i].question, contexts[i].passages) for i in todo]
            with trace.stage("generate"):
                results = self.llm.generate(convs, expert=self.config.expert,
                                            max_new_tokens=self.config.max_new_tokens)
            trace.count("generator", len(convs))
            trace.count("completion_tokens", sum(r.completion_tokens for r in results))
            texts = dict(zip(todo, results, strict=True))
        share = trace.share(len(checked))
        return [self._result(ctx, texts.get(i), share) for i, ctx in enumerate(contexts)]

    async def aanswer(self, question: str, listener: Listener | None = None) -> CRAGResult:
        import asyncio

        return await asyncio.to_thread(self.answer, question, listener)

    def stream(self, question: str, listener: Listener | None = None) -> Iterator[Any]:
        """The corrected context (a :class:`CorrectedContext`), then the answer's text pieces
        as they are generated (str), then the :class:`CRAGResult`."""
        question = check_question(question)
        trace = Trace(listener=listener)
        ctx = self._correct_many([question], trace)[0]
        yield ctx
        yield from self.stage_generate(ctx, trace)

    def stage_generate(self, ctx: CorrectedContext, trace: Trace) -> Iterator[Any]:
        """The answer from a corrected context: its text pieces as they are generated (str),
        then the :class:`CRAGResult` (the refusal when there are no passages)."""
        if not ctx.passages:
            yield REFUSAL
            yield self._result(ctx, None, trace)
            return
        final = yield from stream_answer(self.llm, ctx.question, ctx.passages, trace,
                                         expert=self.config.expert,
                                         max_new_tokens=self.config.max_new_tokens)
        yield self._result(ctx, final, trace)

    def _result(self, ctx: CorrectedContext, generated: Any, trace: Trace) -> CRAGResult:
        # None: Incorrect with nothing external; refuse, never answer from rejects
        text, citations, refused = grounded_outcome(generated, ctx.passages)
        return CRAGResult(question=ctx.question, answer=text, citations=citations,
                          action=ctx.action, context=ctx, refused=refused,
                          seconds=dict(trace.seconds), calls=dict(trace.calls),
                          expert=self.config.expert)

    # ------------------------------------------------------------------ calibration
    def calibrate(self, items: Sequence[dict[str, Any]], precision: float = 0.9,
                  apply: bool = True) -> dict[str, Any]:
        """Pick ``upper`` / ``lower`` for this evaluator from labelled items: each a dict
        with ``question``, ``documents`` (strings or Documents) and ``has_answer`` (bool:
        whether any document holds the answer). Scores every pair in one batched pass.
        ``apply`` stores the thresholds (and the calibration figures) in ``self.config``."""
        pairs, owners, labels = [], [], []
        for n, item in enumerate(items):
            q = check_question(item.get("question"), f"items[{n}].question")
            docs = item.get("documents") or []
            if not docs:
                raise InputError(f"items[{n}] has no documents")
            if not isinstance(item.get("has_answer"), bool):
                raise InputError(f"items[{n}].has_answer must be a bool")
            for d in docs:
                pairs.append((q, d.text if isinstance(d, Document) else str(d)))
                owners.append(n)
            labels.append(item["has_answer"])
        scores = self._score(pairs, Trace(), "calibrate")
        best = [-math.inf] * len(labels)
        for n, s in zip(owners, scores, strict=True):
            best[n] = max(best[n], s)
        result = calibrate_thresholds(best, labels, precision)
        if apply:
            self.config = replace(self.config, upper=result["upper"], lower=result["lower"],
                                  calibration={**result,
                                               "evaluator": repr(self.evaluator)}).validate()
        return result

