"""Self-RAG (Asai et al. 2024) on one small base: reflection judgements as label probabilities.

The four judgements (Retrieve, IsRel, IsSup, IsUse) come from the ``critic`` expert
(:class:`expertrag.reflection.Critic`), or natively from a Self-RAG checkpoint's reflection
tokens (:class:`NativeCritic`) when the loaded model's vocabulary has them. Each is one forward
pass; nothing is generated or parsed to decide.

Short form (the default):

1. Retrieve when p(yes) / (p(yes) + p(no)) > ``retrieve_threshold`` (0.2, on probabilities:
   the official code applies it to log-probabilities, so it always retrieves).
2. IsRel for the ``k`` retrieved passages in one batch; candidate answers are generated in one
   batch, one per passage among the ``candidates`` most relevant (all ``k`` when None), plus
   optionally one from the two most relevant together (``joint_candidate``: multi-hop
   questions need both hops).
3. Each candidate: ``w_rel * IsRel + w_sup * (p(full) + 0.5 p(partial)) + w_use * sum(w_i p(i))``
   with utility weights (-1, -0.5, 0, 0.5, 1) and defaults 1, 1, 0.5, plus its mean token
   log-probability when ``use_logprob``; the best candidate wins.

Long form: a segment-level beam (``beam_width``, at most ``max_depth`` segments): every beam
is continued by one sentence per relevant passage, scored on the answer so far, and the best
``beam_width`` survive. Every loop is bounded by its settings; none can run away.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from expertrag.chains.base import (
    Listener,
    Retrieve,
    Trace,
    as_retrieve,
    call_source,
    check_question,
)
from expertrag.config import ConfigMixin
from expertrag.errors import InputError
from expertrag.experts import GROUNDED_QA, ensure_attached
from expertrag.experts.grounded_qa import (
    REFUSAL,
    build_messages,
    is_refusal,
    select_citations,
    tidy_citations,
)
from expertrag.models.chat import check_num_beams
from expertrag.reflection import (
    ISREL,
    ISSUP,
    ISUSE,
    LABELS,
    RETRIEVE,
    Critic,
    Judgement,
)
from expertrag.types import Document

MODES = ("short", "long")
_CITE_ONE_RE = re.compile(r"\[\s*1\s*\]")


@dataclass
class SelfRAGConfig(ConfigMixin):
    """Settings of a :class:`SelfRAG` chain (defaults as in the Self-RAG paper where it sets
    them); saved and loaded as JSON (:class:`~expertrag.config.ConfigMixin`)."""

    k: int = 5
    retrieve_threshold: float = 0.2
    always_retrieve: bool = False
    w_rel: float = 1.0
    w_sup: float = 1.0
    w_use: float = 0.5
    use_logprob: bool = False
    w_logprob: float = 1.0
    candidates: int | None = 3
    joint_candidate: bool = True
    expert: str | None = GROUNDED_QA
    no_retrieval_expert: str | None = None
    max_new_tokens: int = 64
    # candidates are decoded greedily: the critic already picks among them, and the expert's
    # 3 beams (grounded-qa) gained little for much of the chain's time (benchmarks/RESULTS.md);
    # None: the generator expert's own setting
    num_beams: int | None = 1
    mode: str = "short"
    beam_width: int = 2
    max_depth: int = 3
    segment_tokens: int = 48

    def validate(self) -> SelfRAGConfig:
        for name in ("k", "max_new_tokens", "beam_width", "max_depth", "segment_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.candidates is not None and (not isinstance(self.candidates, int)
                                            or self.candidates < 1):
            raise InputError(f"candidates must be a positive integer or None, got "
                             f"{self.candidates!r}")
        if not 0.0 <= self.retrieve_threshold <= 1.0:
            raise InputError(f"retrieve_threshold must be within [0, 1], got "
                             f"{self.retrieve_threshold!r}")
        if self.mode not in MODES:
            raise InputError(f"mode must be one of {MODES}, got {self.mode!r}")
        beams = check_num_beams(self.num_beams)
        if self.use_logprob and (beams or 1) > 1:
            raise InputError("use_logprob scores greedy candidates: it needs num_beams 1 or None")
        return self


@dataclass
class Candidate:
    """One candidate answer, the passages it was generated from and its reflection scores."""

    text: str
    passages: list[Document]
    isrel: float | None
    issup: float | None
    isuse: float
    logprob: float | None = None
    score: float = -math.inf
    judgements: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class SelfRAGResult:
    """The chosen answer, its citations, the retrieve decision and every candidate."""

    question: str
    answer: str
    citations: list[Document]
    retrieved: bool
    retrieve_probability: float
    candidates: list[Candidate]
    best: int
    refused: bool
    seconds: dict[str, float]
    calls: dict[str, int]

    @property
    def forward_calls(self) -> int:
        return sum(v for k, v in self.calls.items() if not k.endswith("_tokens"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------ native critic
#: Self-RAG's reflection tokens (the official checkpoints' added vocabulary) per judgement, in
#: the order of :data:`expertrag.reflection.LABELS`.
NATIVE_TOKENS: dict[str, tuple[str, ...]] = {
    RETRIEVE: ("[Retrieval]", "[No Retrieval]"),
    ISREL: ("[Relevant]", "[Irrelevant]"),
    ISSUP: ("[Fully supported]", "[Partially supported]", "[No support / Contradictory]"),
    ISUSE: ("[Utility:5]", "[Utility:4]", "[Utility:3]", "[Utility:2]", "[Utility:1]"),
}


def has_reflection_tokens(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` holds every Self-RAG reflection token as one token."""
    vocab = tokenizer.get_vocab()
    return all(t in vocab for tokens in NATIVE_TOKENS.values() for t in tokens)


class NativeCritic:
    """The reflection judgements of a Self-RAG checkpoint, read from its reflection tokens
    in the official prompt format (``### Instruction: ... ### Response:``), one forward pass
    each; same interface as :class:`~expertrag.reflection.Critic`."""

    def __init__(self, llm: Any, expert: str | None = None, batch_size: int = 16) -> None:
        if not has_reflection_tokens(llm.tokenizer):
            raise InputError("the model's vocabulary has no Self-RAG reflection tokens "
                             "([Retrieval], [Relevant], [Fully supported], [Utility:5], ...)")
        self.llm, self.expert, self.batch_size = llm, expert, batch_size

    @staticmethod
    def prompt(kind: str, question: str, passage: str | None = None,
               answer: str | None = None) -> str:
        head = f"### Instruction:\n{question.strip()}\n\n### Response:\n"
        if kind == RETRIEVE:
            return head
        evidence = f"[Retrieval]<paragraph>{(passage or '').strip()}</paragraph>"
        if kind == ISREL:
            return head + evidence
        if kind == ISSUP:
            return head + evidence + "[Relevant]" + (answer or "").strip()
        # IsUse follows the answer (and its support token) in Self-RAG's output order
        if passage:
            return head + evidence + "[Relevant]" + (answer or "").strip() + "[Fully supported]"
        return head + "[No Retrieval]" + (answer or "").strip()

    def judge(self, kind: str, items: Sequence[dict[str, str]]) -> list[Judgement]:
        if kind not in NATIVE_TOKENS:
            raise InputError(f"unknown judgement {kind!r}")
        prompts = [self.prompt(kind, it.get("question", ""), it.get("passage"),
                               it.get("answer")) for it in items]
        if not prompts:
            return []
        tokens = NATIVE_TOKENS[kind]
        rows = self.llm.label_probabilities(prompts, labels=tokens, expert=self.expert,
                                            batch_size=self.batch_size, raw=True)
        out = []
        for row in rows:
            total = sum(row.values()) or 1.0
            out.append(Judgement(kind, {lab: row[tok] / total
                                        for lab, tok in zip(LABELS[kind], tokens, strict=True)}))
        return out


# ------------------------------------------------------------------------------ the chain
@dataclass
class SelfRAGState:
    """Self-RAG's work on several questions between two stages (see
    :meth:`SelfRAG.stage_decide` and the stages after it)."""

    questions: list[str]
    probabilities: list[float]
    retrieve: list[bool]
    docs: list[list[Document]] = field(default_factory=list)
    candidates: list[list[Candidate]] = field(default_factory=list)


class SelfRAG:
    """Self-RAG over ``retriever`` (any source, see :mod:`expertrag.chains.base`) with
    ``llm`` (an :class:`~expertrag.models.ExpertLLM`).

    ``critic``: a :class:`~expertrag.reflection.Critic` or :class:`NativeCritic`; default: the
    native reflection tokens when the vocabulary has them, else the shipped ``critic``
    expert.
    """

    def __init__(self, llm: Any, retriever: Any, critic: Any = None,
                 config: SelfRAGConfig | None = None) -> None:
        self.llm = llm
        self._retrieve: Retrieve = as_retrieve(retriever)
        self.config = (config or SelfRAGConfig()).validate()
        if critic is None:
            tok = getattr(llm, "tokenizer", None)
            critic = (NativeCritic(llm) if tok is not None and has_reflection_tokens(tok)
                      else Critic.shipped(llm))
        if not callable(getattr(critic, "judge", None)):
            raise InputError("critic must have judge(kind, items) (a Critic or NativeCritic)")
        self.critic = critic
        if self.config.expert == GROUNDED_QA:
            ensure_attached(llm, GROUNDED_QA)

    # ------------------------------------------------------------------ helpers
    def _judge(self, kind: str, items: list[dict[str, str]], trace: Trace) -> list[Judgement]:
        if not items:
            return []
        with trace.stage(kind):
            out = self.critic.judge(kind, items)
        trace.count(f"critic_{kind}", len(items))
        return out

    def _generate(self, convs: list[list[dict[str, str]]], expert: str | None, trace: Trace,
                  max_new_tokens: int, **kwargs: Any) -> list[Any]:
        if not convs:
            return []
        if self.config.num_beams is not None:
            kwargs.setdefault("num_beams", self.config.num_beams)
        with trace.stage("generate"):
            results = self.llm.generate(convs, expert=expert, max_new_tokens=max_new_tokens,
                                        logprobs=self.config.use_logprob, **kwargs)
        trace.count("generator", len(convs))
        trace.count("completion_tokens", sum(r.completion_tokens for r in results))
        return results

    def _score(self, cand: Candidate) -> float:
        cfg = self.config
        total = cfg.w_use * cand.isuse
        if cand.isrel is not None:
            total += cfg.w_rel * cand.isrel
        if cand.issup is not None:
            total += cfg.w_sup * cand.issup
        if cfg.use_logprob and cand.logprob is not None:
            total += cfg.w_logprob * cand.logprob
        return total

    @staticmethod
    def retrieve_probability(judgement: Judgement) -> float:
        """p(yes) / (p(yes) + p(no)) on probabilities."""
        yes, no = judgement.probs["yes"], judgement.probs["no"]
        return yes / (yes + no) if yes + no > 0 else 0.0

    # ------------------------------------------------------------------ answering
    def answer(self, question: str, listener: Listener | None = None) -> SelfRAGResult:
        return self.answer_many([check_question(question)], listener)[0]

    async def aanswer(self, question: str, listener: Listener | None = None) -> SelfRAGResult:
        import asyncio

        return await asyncio.to_thread(self.answer, question, listener)

    def answer_many(self, questions: Sequence[str],
                    listener: Listener | None = None) -> list[SelfRAGResult]:
        """Answer several questions; critic and generator calls are batched across them.
        Seconds and calls in each result are the batch's shared evenly. ``listener`` hears
        the stages and the retrieve decision (see :class:`~expertrag.chains.base.Trace`)."""
        if isinstance(questions, str):
            raise InputError("answer_many() takes a list of questions; use answer() for one")
        checked = [check_question(q, f"questions[{i}]") for i, q in enumerate(questions)]
        if not checked:
            return []
        trace = Trace(listener=listener)
        state = self.stage_decide(checked, trace)
        state = self.stage_retrieve(state, trace)
        state = self.stage_candidates(state, trace)
        return self.stage_select(state, trace.share(len(checked)))

    # The answer is built in stages over a SelfRAGState (for several questions at once):
    # decide, retrieve, candidates (generated and critiqued), select. answer_many runs them
    # in order; the LlamaIndex workflow runs each as a step of its own.
    def stage_decide(self, questions: list[str], trace: Trace) -> SelfRAGState:
        """The critic's Retrieve judgement, and whether to retrieve, per question."""
        cfg = self.config
        probs = [self.retrieve_probability(j) for j in self._judge(
            RETRIEVE, [{"question": q} for q in questions], trace)]
        retrieve = [cfg.always_retrieve or p > cfg.retrieve_threshold for p in probs]
        trace.emit("retrieve_decision", questions=questions, probabilities=probs,
                   retrieve=retrieve)
        return SelfRAGState(questions=list(questions), probabilities=probs, retrieve=retrieve)

    def stage_retrieve(self, state: SelfRAGState, trace: Trace) -> SelfRAGState:
        """``k`` documents for each question that retrieves."""
        with trace.stage("retrieve"):
            state.docs = [call_source(self._retrieve, q, self.config.k, "retriever") if r
                          else [] for q, r in zip(state.questions, state.retrieve, strict=True)]
        return state

    def stage_candidates(self, state: SelfRAGState, trace: Trace) -> SelfRAGState:
        """Candidate answers, each generated and critiqued (IsRel, IsSup, IsUse) and
        scored."""
        if self.config.mode == "long":
            state.candidates = self._long_form(state.questions, state.docs, state.retrieve,
                                               trace)
        else:
            state.candidates = self._short_form(state.questions, state.docs, state.retrieve,
                                                trace)
        for mine in state.candidates:
            for c in mine:
                c.score = self._score(c)
        return state

    def stage_select(self, state: SelfRAGState, trace: Trace) -> list[SelfRAGResult]:
        """The best-scored candidate of each question, with its citations."""
        out = []
        for q, r, p, mine in zip(state.questions, state.retrieve, state.probabilities,
                                 state.candidates, strict=True):
            best = max(range(len(mine)), key=lambda i: (mine[i].score, -i))
            chosen = mine[best]
            refused = is_refusal(chosen.text)
            citations = select_citations(chosen.text, chosen.passages) if chosen.passages \
                else []
            out.append(SelfRAGResult(question=q, answer=chosen.text, citations=citations,
                                     retrieved=r, retrieve_probability=p, candidates=mine,
                                     best=best, refused=refused, seconds=dict(trace.seconds),
                                     calls=dict(trace.calls)))
        return out

    def _no_retrieval(self, questions: list[str], trace: Trace) -> list[Candidate]:
        results = self._generate([[{"role": "user", "content": q}] for q in questions],
                                 self.config.no_retrieval_expert, trace,
                                 self.config.max_new_tokens)
        texts = [r.text.strip() or REFUSAL for r in results]
        use = self._judge(ISUSE, [{"question": q, "answer": t}
                                  for q, t in zip(questions, texts, strict=True)], trace)
        return [Candidate(text=t, passages=[], isrel=None, issup=None, isuse=u.score,
                          logprob=r.mean_logprob, judgements={ISUSE: u.probs})
                for t, r, u in zip(texts, results, use, strict=True)]

    def _short_form(self, questions: list[str], docs: list[list[Document]],
                    retrieve: list[bool], trace: Trace) -> list[list[Candidate]]:
        cfg = self.config
        plain = [i for i, (r, d) in enumerate(zip(retrieve, docs, strict=True)) if not r or not d]
        out: list[list[Candidate]] = [[] for _ in questions]
        for i, cand in zip(plain, self._no_retrieval([questions[i] for i in plain], trace),
                           strict=True):
            out[i] = [cand]
        grounded = [i for i in range(len(questions)) if i not in set(plain)]
        rel_items = [(i, j) for i in grounded for j in range(len(docs[i]))]
        rel = self._judge(ISREL, [{"question": questions[i], "passage": docs[i][j].text}
                                  for i, j in rel_items], trace)
        isrel = {key: j for key, j in zip(rel_items, rel, strict=True)}
        # which passages each candidate is generated from
        plans: list[tuple[int, list[int]]] = []
        for i in grounded:
            order = sorted(range(len(docs[i])), key=lambda j: (-isrel[(i, j)].score, j))
            top = order[: cfg.candidates] if cfg.candidates else order
            plans += [(i, [j]) for j in top]
            if cfg.joint_candidate and len(order) >= 2:
                plans.append((i, sorted(order[:2])))
        results = self._generate(
            [build_messages(questions[i], [docs[i][j] for j in js]) for i, js in plans],
            cfg.expert, trace, cfg.max_new_tokens)
        texts = [tidy_citations(r.text.strip()) or REFUSAL for r in results]
        sup = self._judge(ISSUP, [{"question": questions[i],
                                   "passage": "\n".join(docs[i][j].text for j in js),
                                   "answer": t}
                                  for (i, js), t in zip(plans, texts, strict=True)], trace)
        use = self._judge(ISUSE, [{"question": questions[i], "answer": t}
                                  for (i, _), t in zip(plans, texts, strict=True)], trace)
        for (i, js), t, r, s, u in zip(plans, texts, results, sup, use, strict=True):
            rels = [isrel[(i, j)] for j in js]
            out[i].append(Candidate(
                text=t, passages=[docs[i][j] for j in js],
                isrel=sum(x.score for x in rels) / len(rels), issup=s.score, isuse=u.score,
                logprob=r.mean_logprob,
                judgements={ISREL: rels[0].probs, ISSUP: s.probs, ISUSE: u.probs}))
        return out

    def _long_form(self, questions: list[str], docs: list[list[Document]],
                   retrieve: list[bool], trace: Trace) -> list[list[Candidate]]:
        """Segment-level beam search: at most ``max_depth`` rounds, each continuing every
        live beam by one sentence per relevant passage and keeping the best
        ``beam_width`` answers so far."""
        cfg = self.config
        out: list[list[Candidate]] = []
        for q, d, r in zip(questions, docs, retrieve, strict=True):
            if not r or not d:
                out.append(self._no_retrieval([q], trace))
                continue
            rel = self._judge(ISREL, [{"question": q, "passage": p.text} for p in d], trace)
            order = sorted(range(len(d)), key=lambda j: (-rel[j].score, j))
            top = order[: cfg.candidates] if cfg.candidates else order
            beams = [Candidate(text="", passages=[], isrel=None, issup=None, isuse=0.0,
                               score=0.0)]
            finished: list[Candidate] = []
            for _ in range(cfg.max_depth):  # bounded: at most max_depth segments
                grow = [(b, j) for b in beams for j in top]
                convs = []
                for b, j in grow:
                    conv = build_messages(q, [d[j]])
                    if b.text:
                        conv = [*conv, {"role": "assistant", "content": b.text + " "}]
                    convs.append(conv)
                kwargs = {"stop": [". ", ".\n"]}
                first = [c for c, (b, _) in zip(convs, grow, strict=True) if not b.text]
                later = [c for c, (b, _) in zip(convs, grow, strict=True) if b.text]
                res_first = self._generate(first, cfg.expert, trace, cfg.segment_tokens,
                                           **kwargs)
                res_later = self._generate(later, cfg.expert, trace, cfg.segment_tokens,
                                           continue_final_message=True, **kwargs)
                it_first, it_later = iter(res_first), iter(res_later)
                grown = []
                for b, j in grow:
                    res = next(it_later) if b.text else next(it_first)
                    segment = res.text.strip()
                    if segment and not segment.endswith((".", "!", "?")) and \
                            res.finish_reason == "stop":
                        segment += "."
                    passages = b.passages + ([d[j]] if d[j] not in b.passages else [])
                    # the segment saw one passage, cited as [1]: point it at the list
                    segment = _CITE_ONE_RE.sub(f"[{passages.index(d[j]) + 1}]", segment)
                    text = (b.text + " " + segment).strip() if segment else b.text
                    grown.append((text, passages, j, res, bool(segment)
                                  and res.finish_reason == "stop" and not is_refusal(segment)))
                sup = self._judge(ISSUP, [{"question": q, "passage": "\n".join(
                    p.text for p in ps), "answer": t or REFUSAL} for t, ps, _, _, _ in grown],
                    trace)
                use = self._judge(ISUSE, [{"question": q, "answer": t or REFUSAL}
                                          for t, _, _, _, _ in grown], trace)
                cands = []
                for (t, ps, j, res, more), s, u in zip(grown, sup, use, strict=True):
                    c = Candidate(text=tidy_citations(t) or REFUSAL, passages=ps,
                                  isrel=rel[j].score, issup=s.score, isuse=u.score,
                                  logprob=res.mean_logprob,
                                  judgements={ISREL: rel[j].probs, ISSUP: s.probs,
                                              ISUSE: u.probs})
                    c.score = self._score(c)
                    (cands if more else finished).append(c)
                cands.sort(key=lambda c: -c.score)
                beams = cands[: cfg.beam_width]
                if not beams:
                    break
            out.append(finished + beams or [Candidate(text=REFUSAL, passages=[], isrel=None,
                                                      issup=None, isuse=-1.0)])
        return out

