"""Iterative multi-hop retrieval with the ``hop`` expert, then a grounded answer.

A bridge question's second paragraph is named only by its first, so one retrieval step with
the question cannot find it, and a per-passage relevance judgement scores it low. The chain
moves that work into retrieval, one bounded loop per question (IRCoT's interleaving, with the
decisions of EfficientRAG as single forward passes of a small expert):

1. retrieve ``k`` passages not seen at an earlier hop for the hop's query (the question
   itself at hop 1; later the generated query, followed by the question when
   ``search_with_question``) from any source (:mod:`expertrag.chains.base`: a vector store,
   hybrid, BM25, a graph retriever, a LangChain or LlamaIndex retriever);
2. keep the passages the ``hop`` expert rates as a step toward the answer, P(yes) of
   :func:`~expertrag.experts.hop.keep_messages`, at most ``keep_per_hop`` of them (at hop 1
   the best one is kept even below the threshold: the answer needs somewhere to start);
3. stop when P(yes) of :func:`~expertrag.experts.hop.stop_messages` reaches
   ``stop_threshold`` or after ``max_hops`` hops (a hard bound), else generate the next
   query under a grammar (one JSON string of at most 80 characters, never free text) and go
   on; a query asked before ends the loop too;
4. with ``lookahead`` > 0, check that query before using it: it and up to ``lookahead``
   names the evidence mentions (not in the question, not asked before) each retrieve, and
   the expert's keep judgement reads the first new passage each finds; a name replaces the
   generated query only when its passage's P(yes) beats the query's by ``lookahead_margin``
   (:func:`~expertrag.experts.hop.choose_query`). The chosen search's passages are the next
   hop's, not retrieved again.

Then ``grounded-qa`` answers from ``context_size`` passages in hop order, citing them
(:func:`assemble`: by default the first hop's passages, where each later hop's kept passage
takes the place of the lowest-scored one the expert did not keep). Every step of
every question is recorded (:class:`Hop`). :meth:`MultiHopRAG.answer_many` batches each
step across the questions still going: one keep pass and one stop pass per hop (the model plans
their batches by length), query and answer generations in batches of ``batch_size`` rows of
similar prompt length, so a call with many questions pads little.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from expertrag.chains.base import (
    Listener,
    Retrieve,
    Trace,
    as_retrieve,
    call_source,
    check_question,
    check_questions,
    generate_sorted,
    grounded_outcome,
    stream_answer,
)
from expertrag.config import ConfigMixin
from expertrag.errors import InputError
from expertrag.experts import GROUNDED_QA, HOP, ensure_attached
from expertrag.experts.grounded_qa import (
    REFUSAL,
    build_messages,
)
from expertrag.experts.hop import (
    LABELS,
    NEXT_QUERY_SCHEMA,
    capitalized_names,
    choose_query,
    keep_messages,
    lookahead_candidates,
    next_messages,
    parse_query,
    stop_messages,
)
from expertrag.types import Document

__all__ = ["ASSEMBLE_MODES", "NAME_FINDERS", "Hop", "MultiHopConfig", "MultiHopContext",
           "MultiHopRAG", "MultiHopResult", "assemble", "name_finder"]


#: how the lookahead finds the names its candidates come from (see :func:`name_finder`)
NAME_FINDERS = ("capitalized", "spacy")
#: spaCy labels that the graph's extractor keeps but that name no page to look up
_WHEN = frozenset({"DATE", "TIME"})


def name_finder(kind: str) -> Callable[[str], list[str]]:
    """The lookahead's names of a text, in order: ``capitalized``
    (:func:`~expertrag.experts.hop.capitalized_names`, no dependency) or ``spacy`` (the
    graph extractor's named entities, :meth:`~expertrag.graph.extract.SpacyExtractor.
    entities_of`, without dates and times; needs the ``graph`` extra, else
    :class:`~expertrag.graph.extract.ExtractionError`)."""
    if kind == "capitalized":
        return capitalized_names
    if kind != "spacy":
        raise InputError(f"names must be one of {', '.join(NAME_FINDERS)}, got {kind!r}")
    from expertrag.graph.extract import SpacyExtractor

    extractor = SpacyExtractor(noun_phrases=False)
    extractor.nlp  # noqa: B018 - loaded here, so a missing pipeline fails at construction

    def spacy_names(text: str) -> list[str]:
        return [e.name for e in extractor.entities_of(text) if e.label not in _WHEN]

    return spacy_names


@dataclass
class MultiHopConfig(ConfigMixin):
    """Settings of a :class:`MultiHopRAG` chain; saved and loaded as JSON.

    ``stop_threshold``, ``assemble``, ``search_with_question`` and ``lookahead`` are chosen
    on the multi-hop benchmark's calibration parts by the final context's both-gold recall
    (``benchmarks/bench_multihop.py --tune`` / ``--candidate-config``; ``lookahead_margin``
    on the hop benchmark's, ``benchmarks/probe_lookahead.py``; figures in
    benchmarks/RESULTS.md)."""

    k: int = 5  # passages retrieved per hop
    max_hops: int = 3  # hard bound on retrieval steps per question
    keep_threshold: float = 0.5
    keep_per_hop: int = 2
    stop_threshold: float = 0.8
    context_size: int = 5  # passages the answerer reads at most
    assemble: str = "displace"  # how the answerer's context is made: see assemble()
    hop_expert: str | None = HOP  # None: the bare base, prompted the same way
    expert: str | None = GROUNDED_QA  # the answerer
    max_new_tokens: int = 64
    query_tokens: int = 32  # bound on the generated next query
    search_with_question: bool = True  # later hops search "<next query> <question>"
    source_timeout: float | None = None
    batch_size: int = 8  # rows per generation (answers, next queries), similar lengths together
    lookahead: int = 5  # names tried beside each generated next query (0: none)
    lookahead_margin: float = 0.2  # how much better a name's passage must be rated
    lookahead_names: str = "capitalized"  # how names are found: see name_finder()

    def validate(self) -> MultiHopConfig:
        for name in ("k", "max_hops", "keep_per_hop", "context_size", "max_new_tokens",
                     "query_tokens", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(self.lookahead, bool) or not isinstance(self.lookahead, int) \
                or not 0 <= self.lookahead <= 10:
            raise InputError(f"lookahead must be an integer in [0, 10], got {self.lookahead!r}")
        if self.lookahead_names not in NAME_FINDERS:
            raise InputError(f"lookahead_names must be one of {', '.join(NAME_FINDERS)}, got "
                             f"{self.lookahead_names!r}")
        if self.max_hops > 8:
            raise InputError(f"max_hops must be at most 8, got {self.max_hops}")
        for name in ("keep_threshold", "stop_threshold", "lookahead_margin"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise InputError(f"{name} must be within [0, 1], got {value!r}")
        if not isinstance(self.search_with_question, bool):
            raise InputError("search_with_question must be True or False, got "
                             f"{self.search_with_question!r}")
        if self.assemble not in ASSEMBLE_MODES:
            raise InputError(f"assemble must be one of {', '.join(ASSEMBLE_MODES)}, got "
                             f"{self.assemble!r}")
        if self.source_timeout is not None and not self.source_timeout > 0:
            raise InputError(f"source_timeout must be > 0 or None, got {self.source_timeout!r}")
        return self


@dataclass
class Hop:
    """One retrieval step of one question."""

    number: int  # 1-based
    query: str
    retrieved: list[Document]  # new passages (not seen at an earlier hop), in source order
    keep_scores: list[float]  # P(step toward the answer) of each retrieved passage
    kept: list[Document]
    stop_probability: float | None = None  # None where the bound or the last hop decided
    next_query: str | None = None
    seconds: float = 0.0
    #: with ``lookahead``: each next query tried (the generated one first) and the keep
    #: probability of the first new passage it retrieved (-1.0: none new)
    lookahead: list[tuple[str, float]] = field(default_factory=list)


@dataclass
class MultiHopContext:
    """What the retrieval loop gathered for one question."""

    question: str
    hops: list[Hop]
    evidence: list[Document]  # kept passages in hop order
    passages: list[Document]  # what the answerer reads (see assemble())
    stopped: str  # "enough" | "max_hops" | "repeated_query" | "no_passages"

    def found(self, k: int | None = None) -> list[tuple[Document, int, float]]:
        """The answerer's passages (the first ``k``), each with the hop that retrieved it
        (1-based) and its keep score."""
        where = {id(d): (h.number, s) for h in self.hops
                 for d, s in zip(h.retrieved, h.keep_scores, strict=True)}
        return [(d, *where.get(id(d), (0, float("nan")))) for d in self.passages[:k]]

    def records(self) -> list[dict[str, Any]]:
        """Every hop as plain data: query, retrieved and kept passage ids, scores, seconds."""
        return [{"hop": h.number, "query": h.query,
                 "retrieved": [d.id for d in h.retrieved], "keep_scores": list(h.keep_scores),
                 "kept": [d.id for d in h.kept], "stop_probability": h.stop_probability,
                 "next_query": h.next_query, "lookahead": [list(c) for c in h.lookahead],
                 "seconds": h.seconds} for h in self.hops]


@dataclass
class MultiHopResult:
    """An answer with its citations and every hop behind it."""

    question: str
    answer: str
    citations: list[Document]
    context: MultiHopContext
    refused: bool
    seconds: dict[str, float]
    calls: dict[str, int]
    expert: str | None = None

    @property
    def hops(self) -> list[Hop]:
        return self.context.hops

    @property
    def forward_calls(self) -> int:
        return sum(v for k, v in self.calls.items() if not k.endswith("_tokens"))


def _key(doc: Document) -> str:
    return f"id:{doc.id}" if doc.id else f"text:{' '.join(doc.text.split())}"


@dataclass
class _State:
    question: str
    query: str
    source: Retrieve
    hops: list[Hop] = field(default_factory=list)
    evidence: list[Document] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    asked: set[str] = field(default_factory=set)
    stopped: str | None = None
    prefetched: dict[str, list[Document]] = field(default_factory=dict)  # lookahead searches
    judged: dict[str, float] = field(default_factory=dict)  # the chosen query's keep scores


ASSEMBLE_MODES = ("displace", "fill", "evidence")


def assemble(hops: Sequence[Hop], size: int, mode: str = "displace") -> list[Document]:
    """The answerer's passages (at most ``size``) from the hops, in hop order.

    - ``displace``: the first hop's retrieved passages (what naive RAG reads), where each later
      hop's kept passage takes the place of the lowest-scored first-hop passage the expert did
      not keep; with nothing kept later it is the first hop's retrieval itself;
    - ``fill``: the kept passages, then the first hop's others in retrieval order;
    - ``evidence``: the kept passages alone.
    """
    evidence = [d for h in hops for d in h.kept]
    if mode == "evidence" or not hops:
        return evidence[:size]
    first = hops[0]
    if mode == "fill":
        out, have = evidence[:size], {_key(d) for d in evidence[:size]}
        for d in first.retrieved:
            if len(out) >= size:
                break
            if _key(d) not in have:
                out.append(d)
                have.add(_key(d))
        return out
    later = [d for h in hops[1:] for d in h.kept]
    kept = {_key(d) for d in first.kept}
    ranked = sorted(range(len(first.retrieved)),
                    key=lambda i: (_key(first.retrieved[i]) not in kept, -first.keep_scores[i]))
    stay = sorted(ranked[:max(len(first.kept), size - len(later))])
    return ([first.retrieved[i] for i in stay] + later)[:size]


class MultiHopRAG:
    """Multi-hop retrieval over ``retriever`` (any source) with the ``hop`` expert, answered
    by ``llm`` with ``config.expert`` (see the module doc)."""

    def __init__(self, llm: Any, retriever: Any, config: MultiHopConfig | None = None) -> None:
        self.llm = llm
        self._retrieve: Retrieve = as_retrieve(retriever)
        self.config = (config or MultiHopConfig()).validate()
        for name in (self.config.hop_expert, self.config.expert):
            if name in (HOP, GROUNDED_QA):
                ensure_attached(llm, name)
        self._names = (name_finder(self.config.lookahead_names) if self.config.lookahead
                       else None)

    # ------------------------------------------------------------------ the loop
    def _keep(self, states: list[_State], found: list[list[Document]], hop: int,
              trace: Trace) -> list[list[float]]:
        # a passage the lookahead judged for this very query is not judged again
        pairs = [keep_messages(s.question, s.query, d.text)
                 for s, docs in zip(states, found, strict=True) for d in docs
                 if _key(d) not in s.judged]
        probs: list[Any] = []
        if pairs:
            with trace.stage("keep"):
                probs = self.llm.label_probabilities(pairs, labels=LABELS,
                                                     expert=self.config.hop_expert)
            trace.count("keep", len(pairs))
        flat = iter(float(p[LABELS[0]]) for p in probs)
        scores = [[s.judged[_key(d)] if _key(d) in s.judged else next(flat) for d in docs]
                  for s, docs in zip(states, found, strict=True)]
        for s in states:
            s.judged.clear()
        return scores

    def _stop(self, states: list[_State], trace: Trace) -> list[float]:
        convs = [stop_messages(s.question, [d.text for d in s.evidence]) for s in states]
        with trace.stage("stop"):
            probs = self.llm.label_probabilities(convs, labels=LABELS,
                                                 expert=self.config.hop_expert)
        trace.count("stop", len(convs))
        return [float(p[LABELS[0]]) for p in probs]

    def _next(self, states: list[_State], trace: Trace) -> list[str | None]:
        convs = [next_messages(s.question, [d.text for d in s.evidence]) for s in states]
        with trace.stage("next"):
            results = generate_sorted(self.llm, convs, self.config.batch_size,
                                      expert=self.config.hop_expert,
                                      max_new_tokens=self.config.query_tokens,
                                      temperature=0.0, json_schema=NEXT_QUERY_SCHEMA)
        trace.count("next", len(convs))
        queries: list[str | None] = []
        for r in results:
            try:
                queries.append(parse_query(r.parsed if isinstance(r.parsed, str) else r.text))
            except InputError:  # an empty query: nothing more to look up
                queries.append(None)
        return queries

    def _search(self, s: _State, query: str, number: int) -> str:
        """What hop ``number`` sends to the source for ``query``."""
        if number > 1 and self.config.search_with_question:
            return f"{query} {s.question}"
        return query

    def _fetch(self, s: _State, search: str) -> list[Document]:
        # ask for as many more as were seen, so the hop gets k new passages
        return call_source(s.source, search, self.config.k + len(s.seen), "retriever",
                           self.config.source_timeout)

    def _look_ahead(self, states: list[_State], queries: list[str | None], number: int,
                    trace: Trace) -> list[str | None]:
        """Each generated query checked against the names of its evidence (module doc,
        step 4): one retrieval per candidate, one keep pass across every question."""
        cfg = self.config
        assert self._names is not None
        tried: list[list[str]] = []
        pairs: list[Any] = []
        where: list[tuple[int, int, str]] = []  # each pair's state, candidate and passage
        with trace.stage("lookahead"):
            for i, (s, query) in enumerate(zip(states, queries, strict=True)):
                if query is None or query.lower() in s.asked:
                    tried.append([])  # nothing new to check: the loop ends as before
                    continue
                names = self._names("\n".join(d.text for d in s.evidence))
                cands = lookahead_candidates(query, s.question, names, cfg.lookahead + 1,
                                             sorted(s.asked))
                tried.append(cands)
                for j, c in enumerate(cands):
                    search = self._search(s, c, number)
                    docs = s.prefetched[search] = self._fetch(s, search)
                    new = next((d for d in docs if _key(d) not in s.seen), None)
                    if new is not None:
                        pairs.append(keep_messages(s.question, c, new.text))
                        where.append((i, j, _key(new)))
            trace.count("retrieve", sum(map(len, tried)))
            probs = (self.llm.label_probabilities(pairs, labels=LABELS,
                                                  expert=cfg.hop_expert) if pairs else [])
        trace.count("lookahead", len(pairs))
        keeps = [[-1.0] * len(c) for c in tried]
        firsts: dict[tuple[int, int], str] = {}
        for (i, j, key), p in zip(where, probs, strict=True):
            keeps[i][j] = float(p[LABELS[0]])
            firsts[i, j] = key
        out: list[str | None] = []
        for i, (s, query, cands, ks) in enumerate(zip(states, queries, tried, keeps,
                                                      strict=True)):
            if not cands:
                out.append(query)
                continue
            s.hops[-1].lookahead = list(zip(cands, ks, strict=True))
            chosen = choose_query(cands, ks, cfg.lookahead_margin)
            j = cands.index(chosen)
            if (i, j) in firsts:
                s.judged = {firsts[i, j]: ks[j]}
            out.append(chosen)
        return out

    def _hop(self, states: list[_State], number: int, trace: Trace) -> None:
        """One hop for every question still going: retrieve, keep, then stop or ask."""
        cfg = self.config
        started = time.perf_counter()
        found: list[list[Document]] = []
        with trace.stage("retrieve"):
            for s in states:
                search = self._search(s, s.query, number)
                docs = s.prefetched.get(search)
                if docs is None:
                    docs = self._fetch(s, search)
                s.prefetched.clear()
                fresh = []
                for d in docs:
                    if _key(d) not in s.seen and len(fresh) < cfg.k:
                        s.seen.add(_key(d))
                        fresh.append(d)
                found.append(fresh)
        trace.count("retrieve", len(states))
        scores = self._keep(states, found, number, trace)
        for s, docs, sc in zip(states, found, scores, strict=True):
            ranked = sorted(range(len(docs)), key=lambda i: -sc[i])
            kept = [i for i in ranked if sc[i] >= cfg.keep_threshold][:cfg.keep_per_hop]
            if not kept and not s.evidence and ranked:  # somewhere to start
                kept = ranked[:1]
            s.hops.append(Hop(number, s.query, docs, sc, [docs[i] for i in sorted(kept)]))
            s.evidence.extend(docs[i] for i in sorted(kept))
            s.asked.add(s.query.lower())
            if not s.evidence:
                s.stopped = "no_passages"
            elif number >= cfg.max_hops:
                s.stopped = "max_hops"
        going = [s for s in states if s.stopped is None]
        if going:
            for s, p in zip(going, self._stop(going, trace), strict=True):
                s.hops[-1].stop_probability = p
                if p >= cfg.stop_threshold:
                    s.stopped = "enough"
        going = [s for s in going if s.stopped is None]
        if going:
            queries = self._next(going, trace)
            if cfg.lookahead:
                queries = self._look_ahead(going, queries, number + 1, trace)
            for s, query in zip(going, queries, strict=True):
                s.hops[-1].next_query = query
                if query is None or query.lower() in s.asked:
                    s.stopped = "repeated_query"
                else:
                    s.query = query
        took = (time.perf_counter() - started) / max(1, len(states))
        for s in states:
            s.hops[-1].seconds = took

    def _context(self, s: _State) -> MultiHopContext:
        passages = assemble(s.hops, self.config.context_size, self.config.assemble)
        return MultiHopContext(s.question, s.hops, list(s.evidence), passages,
                               s.stopped or "max_hops")

    def _sources(self, sources: Sequence[Any] | None, n: int) -> list[Retrieve]:
        if sources is None:
            return [self._retrieve] * n
        if isinstance(sources, str) or not isinstance(sources, Sequence) or len(sources) != n:
            raise InputError(f"sources must be a list of one source per question ({n}), got "
                             f"{sources!r:.80}")
        return [as_retrieve(src, f"sources[{i}]") for i, src in enumerate(sources)]

    def _gather(self, questions: list[str], trace: Trace,
                sources: Sequence[Any] | None = None) -> list[MultiHopContext]:
        states = [_State(q, q, src) for q, src in
                  zip(questions, self._sources(sources, len(questions)), strict=True)]
        for number in range(1, self.config.max_hops + 1):
            going = [s for s in states if s.stopped is None]
            if not going:
                break
            self._hop(going, number, trace)
        return [self._context(s) for s in states]

    # ------------------------------------------------------------------ public
    def retrieve(self, question: str, listener: Listener | None = None) -> MultiHopContext:
        """The retrieval loop alone: the evidence for ``question``, hop by hop."""
        return self._gather([check_question(question)], Trace(listener=listener))[0]

    def retrieve_many(self, questions: Sequence[str], listener: Listener | None = None,
                      sources: Sequence[Any] | None = None) -> list[MultiHopContext]:
        """:meth:`retrieve` for several questions, each step batched across them.
        ``sources``: one source per question (each searching its own passages), in place
        of the chain's retriever."""
        checked = check_questions(questions)
        return self._gather(checked, Trace(listener=listener), sources) if checked else []

    def answer(self, question: str, listener: Listener | None = None) -> MultiHopResult:
        return self.answer_many([check_question(question)], listener)[0]

    def answer_many(self, questions: Sequence[str], listener: Listener | None = None,
                    sources: Sequence[Any] | None = None) -> list[MultiHopResult]:
        """Answer several questions; every hop's keep, stop and query passes and the final
        answers are batched across them. ``sources``: one source per question (e.g. each
        question's own paragraphs), in place of the chain's retriever. Seconds and calls in
        each result are the batch's shared evenly."""
        checked = check_questions(questions)
        if not checked:
            return []
        trace = Trace(listener=listener)
        contexts = self._gather(checked, trace, sources)
        todo = [i for i, c in enumerate(contexts) if c.passages]
        results: dict[int, Any] = {}
        if todo:
            convs = [build_messages(contexts[i].question, contexts[i].passages) for i in todo]
            with trace.stage("generate"):
                out = generate_sorted(self.llm, convs, self.config.batch_size,
                                      expert=self.config.expert,
                                      max_new_tokens=self.config.max_new_tokens,
                                      temperature=0.0)
            trace.count("generator", len(convs))
            trace.count("completion_tokens", sum(r.completion_tokens for r in out))
            results = dict(zip(todo, out, strict=True))
        share = trace.share(len(checked))
        return [self._result(c, results.get(i), share) for i, c in enumerate(contexts)]

    async def aanswer(self, question: str, listener: Listener | None = None) -> MultiHopResult:
        import asyncio

        return await asyncio.to_thread(self.answer, question, listener)

    def stream(self, question: str, listener: Listener | None = None) -> Iterator[Any]:
        """The :class:`MultiHopContext`, then the answer's text pieces as they are generated
        (str), then the :class:`MultiHopResult`."""
        trace = Trace(listener=listener)
        ctx = self._gather([check_question(question)], trace)[0]
        yield ctx
        if not ctx.passages:
            yield REFUSAL
            yield self._result(ctx, None, trace)
            return
        final = yield from stream_answer(self.llm, ctx.question, ctx.passages, trace,
                                         expert=self.config.expert,
                                         max_new_tokens=self.config.max_new_tokens,
                                         temperature=0.0)
        yield self._result(ctx, final, trace)

    def _result(self, ctx: MultiHopContext, generated: Any, trace: Trace) -> MultiHopResult:
        text, citations, refused = grounded_outcome(generated, ctx.passages)
        return MultiHopResult(question=ctx.question, answer=text, citations=citations,
                              context=ctx, refused=refused, seconds=dict(trace.seconds),
                              calls=dict(trace.calls), expert=self.config.expert)
