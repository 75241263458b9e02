"""Deterministic training-data builders for expert adapters (the shared data files are read by
:mod:`expertrag.datasets`; its loaders are re-exported here).

Every builder returns rows ``{"messages": [...], "answer": str, "meta": {...}}``: the chat
messages are exactly what the expert sees at serve time (the prompts of
:mod:`expertrag.experts.grounded_qa` and :mod:`expertrag.experts.relevance`) and ``answer``
is the assistant reply it is trained to produce (the trainer masks every prompt token).

- :func:`build_raft`: RAFT-style grounded QA (Zhang et al. 2024) from HotpotQA: question +
  oracle paragraph(s) + ``k`` distractors, shuffled; in a share of the rows the oracle is left
  out and the target is :data:`REFUSAL`. Targets are brief and cite their passages: ``Paris [2].``
- :func:`build_squad_raft`: the same prompt from SQuAD 2.0, where unanswerable questions (their
  own paragraph present, the answer absent) teach refusal too.
- :func:`build_relevance`: (question, passage) -> :data:`RELEVANT` / :data:`IRRELEVANT`,
  balanced, hard negatives from HotpotQA distractors, optional SQuAD 2.0 pairs (an
  unanswerable question's own paragraph is the hardest negative) and MS MARCO qrels pairs.

Outputs depend only on the input rows and the seed (each item draws from its own seeded
generator), never on hash seeds or the machine. A broken row raises :class:`DataRowError`
naming its index; nothing is silently skipped.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

from expertrag.datasets import (  # noqa: F401 - the loaders, re-exported from their old home
    _HELD_OUT_NAMES,
    DATA_DIR_ENV,
    DEFAULT_DATA_DIR,
    HALUEVAL_HELDOUT,
    HALUEVAL_MULTI_TURN,
    HALUEVAL_ONE_TURN,
    HALUEVAL_QA,
    HOTPOT_TRAIN,
    MSMARCO_DIR,
    SQUAD_ARTICLES,
    SQUAD_SAMPLE,
    DataError,
    DataNotFoundError,
    DataRowError,
    MsMarco,
    Row,
    data_dir,
    load_halueval,
    load_hotpot,
    load_msmarco,
    load_squad,
    msmarco_part,
)
from expertrag.datasets import hotpot_item as _hotpot_item
from expertrag.datasets import item_rng as _rng
from expertrag.datasets import need_file as _need_file  # noqa: F401
from expertrag.datasets import paragraph_documents as _documents
from expertrag.datasets import read_jsonl as _jsonl  # noqa: F401
from expertrag.datasets import siblings as _siblings
from expertrag.datasets import squad_questions as _squad_questions
from expertrag.errors import InputError
from expertrag.experts import RELEVANCE
from expertrag.experts.grounded_qa import (  # noqa: F401 - re-exported
    INSTRUCTIONS,
    REFUSAL,
    build_messages,
    grounded_answer,
    is_refusal,
    strip_citations,
)
from expertrag.experts.relevance import (  # noqa: F401 - re-exported
    IRRELEVANT,
    RELEVANCE_LABELS,
    RELEVANCE_PROMPT,
    RELEVANT,
    relevance_messages,
)

#: How :func:`build_relevance` makes SQuAD 2.0 negatives (see its docstring).
SQUAD_NEGATIVES: tuple[str, str] = ("unanswerable", "sibling")


# ------------------------------------------------------------------------------ prompts
def relevance_scores(llm: Any, question: str, passages: Sequence[str],
                     expert: str | None = RELEVANCE, batch_size: int = 16) -> list[float]:
    """P(relevant) for each passage, one forward pass each (no generation)."""
    batch = [relevance_messages(question, p) for p in passages]
    probs = llm.label_probabilities(batch, labels=RELEVANCE_LABELS, expert=expert,
                                    batch_size=batch_size)
    return [p[RELEVANT] for p in probs]


# ------------------------------------------------------------------------------ helpers
def _chosen(n: int, share: float, seed: int, tag: str) -> set[int]:
    """Exactly round(share * n) indices out of n, picked by the seed."""
    if not 0.0 <= share <= 1.0:
        raise InputError(f"{tag} share must be within [0, 1], got {share!r}")
    indices = list(range(n))
    _rng(seed, tag).shuffle(indices)
    return set(indices[: round(share * n)])


Count = int | tuple[int, int]


def _check_count(k: Count, name: str = "distractors_k") -> None:
    lo, hi = (k, k) if isinstance(k, int) else k
    if not (isinstance(lo, int) and isinstance(hi, int)) or lo < 0 or hi < lo:
        raise InputError(f"{name} must be an int >= 0 or a (low, high) range, got {k!r}")


def _draw(k: Count, rng: random.Random) -> int:
    """``k`` itself, or a seeded draw from the inclusive range ``(low, high)``: varying the
    passage count teaches an expert to answer from however many passages a retriever gives."""
    return k if isinstance(k, int) else rng.randint(k[0], k[1])


def _holds(text: str, answer: str) -> bool:
    """Whether ``answer`` occurs in ``text`` (case- and space-insensitive)."""
    flat = lambda t: " ".join(t.lower().split())  # noqa: E731
    return flat(answer) in flat(text)


_YES_NO = {"yes", "no"}


def _foreign(rows: Sequence[Row], index: int, rng: random.Random, k: int) -> list[tuple[str, str]]:
    """Up to ``k`` paragraphs of another item (seeded pick): negatives for an item that has no
    distractors of its own (a few HotpotQA items hold only their two gold paragraphs)."""
    others = [j for j in range(len(rows)) if j != index]
    rng.shuffle(others)
    for j in others:
        try:
            _, _, paragraphs, _ = _hotpot_item(rows[j], j)
        except DataRowError:
            continue
        rng.shuffle(paragraphs)
        return paragraphs[:k]
    return []


# ------------------------------------------------------------------------------ builders
def build_raft(hotpot_rows: Sequence[Row], distractors_k: Count = 3, p_no_oracle: float = 0.25,
               seed: int = 42, pair_refusals: bool = False,
               p_answer_dropped: float = 0.0, rounds: int = 1) -> list[Row]:
    """RAFT-style grounded-QA rows from HotpotQA (distractor setting) items.

    Each item gives one row: its gold paragraphs plus ``distractors_k`` of its non-gold
    paragraphs (an int, or a ``(low, high)`` range drawn per item), shuffled and numbered as
    ``build_messages`` does; the target is the answer citing the gold passage numbers.

    Refusal rows (target :data:`REFUSAL`), all with the same passage count as the item's
    answer row:
    - ``round(p_no_oracle * n)`` items (picked by the seed) show distractors only. With
      ``pair_refusals`` such an item keeps its answer row too, so the expert sees the same
      question once with and once without the passages that answer it (a contrastive pair);
      without it the refusal row replaces the answer row.
    - ``round(p_answer_dropped * n)`` further items, among those whose answer (not yes/no)
      occurs in exactly one gold paragraph, get a row where only that paragraph is replaced
      by a distractor: the other hop is on topic but the answer is absent (a hard negative).

    ``rounds`` > 1 repeats the whole construction with fresh draws (distractors, passage order,
    which items lose their oracle), so a small question set yields more distinct prompts;
    round 0 is the same as ``rounds=1``.
    """
    _check_count(distractors_k)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise InputError(f"rounds must be a positive integer, got {rounds!r}")
    rows: list[Row] = []
    for r in range(rounds):
        rows += _raft_round(hotpot_rows, distractors_k, p_no_oracle, seed, pair_refusals,
                            p_answer_dropped, r)
    return rows


def _raft_round(hotpot_rows: Sequence[Row], distractors_k: Count, p_no_oracle: float,
                seed: int, pair_refusals: bool, p_answer_dropped: float, r: int) -> list[Row]:
    """One round of :func:`build_raft` (round 0 keeps the draws of a single-round build)."""
    tag = "" if r == 0 else f"-round{r}"
    no_oracle = _chosen(len(hotpot_rows), p_no_oracle, seed, "raft-no-oracle" + tag)
    dropped_pick = _chosen(len(hotpot_rows), p_answer_dropped, seed,
                           "raft-answer-dropped" + tag)
    rows: list[Row] = []
    for i, item in enumerate(hotpot_rows):
        question, answer, paragraphs, gold = _hotpot_item(item, i)
        rng = _rng(seed, "raft", i) if r == 0 else _rng(seed, "raft", i, r)
        k = _draw(distractors_k, rng)
        oracle = [p for p in paragraphs if p[0] in gold]
        distractors = [p for p in paragraphs if p[0] not in gold]
        rng.shuffle(distractors)
        need = k + len(oracle)
        if i in no_oracle and len(distractors) < need:
            distractors += _foreign(hotpot_rows, i, rng, need - len(distractors))
        meta = {"source": "hotpotqa", "index": i, "id": item.get("id", str(i)),
                "group": f"hotpotqa:{item.get('id', i)}", "gold_answer": answer,
                "type": item.get("type"), **({"round": r} if r else {})}
        item_rows = []
        if i not in no_oracle or pair_refusals:
            item_rows.append((oracle + distractors[:k], True, "oracle"))
        if i in no_oracle:
            if not distractors[:need]:
                raise DataRowError(i, "no distractor passages for a no-oracle row", "hotpotqa")
            item_rows.append((distractors[:need], False, "no-oracle"))
        holding = [p for p in oracle if _holds(p[1], answer)]
        if (i in dropped_pick and len(holding) == 1 and answer.lower() not in _YES_NO
                and len(distractors) > k):
            kept = [p for p in oracle if p is not holding[0]]
            item_rows.append((kept + distractors[:k + 1], False, "answer-dropped"))
        for chosen, has_oracle, variant in item_rows:
            rng.shuffle(chosen)
            cited = [n for n, p in enumerate(chosen, start=1) if p[0] in gold]
            docs = _documents(chosen)
            rows.append({"messages": build_messages(question, docs),
                         "answer": grounded_answer(answer, cited) if has_oracle else REFUSAL,
                         "meta": {**meta, "has_oracle": has_oracle, "variant": variant,
                                  "oracle_passages": cited if has_oracle else [],
                                  "n_passages": len(chosen), "question": question,
                                  "passages": [d.text for d in docs]}})
    return rows


def build_squad_raft(squad_articles: Sequence[Row], distractors_k: Count = 3,
                     p_no_oracle: float = 0.0, seed: int = 42,
                     max_questions: int | None = None, max_answerable: int | None = None,
                     max_impossible: int | None = None,
                     exclude: set[str] | None = None, answer: str = "first",
                     max_answer_words: int = 8) -> list[Row]:
    """Grounded-QA rows from SQuAD 2.0: each question's own paragraph plus ``distractors_k``
    (an int, or a ``(low, high)`` range drawn per question) other paragraphs of the same
    article, shuffled. Answerable questions target their first gold answer citing the
    paragraph; unanswerable ones (``is_impossible``: the paragraph is there but does not hold
    the answer) target :data:`REFUSAL`. ``p_no_oracle`` also drops the paragraph of that share
    of the answerable questions (target: refusal).

    Sampling (seeded): ``max_questions`` keeps that many questions of either kind;
    ``max_answerable`` / ``max_impossible`` cap each kind separately instead (SQuAD 2.0's
    unanswerable questions are written to look answerable; how many of them an expert sees
    sets how readily it refuses). ``exclude``: question ids never to use (e.g. the ones a
    training run used, when building a calibration set). The row index in errors counts
    questions in file order.

    ``answer``: which of the annotators' answers is the target: "first" (SQuAD's own
    order), or "longest" of those within ``max_answer_words`` words: annotators often
    mark a bare fragment ("August") where another marked the whole answer ("the third
    Saturday of August"), and an expert trained on fragments answers in fragments."""
    _check_count(distractors_k)
    if answer not in ("first", "longest"):
        raise InputError(f"answer must be 'first' or 'longest', got {answer!r}")
    questions = _squad_questions(squad_articles)
    keep = [i for i, q in enumerate(questions)
            if not exclude or str(q["qa"].get("id", i)) not in exclude]
    if max_answerable is not None or max_impossible is not None:
        if max_questions is not None:
            raise InputError("pass max_questions or max_answerable/max_impossible, not both")
        kinds: dict[bool, list[int]] = {True: [], False: []}
        for i in keep:
            kinds[bool(questions[i]["qa"].get("is_impossible"))].append(i)
        keep = []
        for impossible, cap in ((False, max_answerable), (True, max_impossible)):
            picks = kinds[impossible]
            _rng(seed, "squad-sample", impossible).shuffle(picks)
            keep += picks if cap is None else picks[:cap]
        keep.sort()
    elif max_questions is not None and max_questions < len(keep):
        _rng(seed, "squad-sample").shuffle(keep)
        keep = sorted(keep[:max_questions])
    no_oracle = {keep[j] for j in _chosen(len(keep), p_no_oracle, seed, "squad-no-oracle")}
    rows: list[Row] = []
    src = "squad2"
    for i in keep:
        q = questions[i]
        qa, context, question = q["qa"], q["context"], q["question"]
        impossible = bool(qa.get("is_impossible"))
        answers = [a.get("text", "").strip() for a in qa.get("answers") or []
                   if isinstance(a, dict) and str(a.get("text", "")).strip()]
        if not impossible and not answers:
            raise DataRowError(i, "answerable question with no answer text", src)
        if answer == "longest" and answers:
            fitting = [a for a in answers if len(a.split()) <= max_answer_words]
            answers = [max(fitting or answers[:1], key=len)]
        siblings = [(f"{q['title']} #{n}", text) for n, text in _siblings(squad_articles, q)]
        rng = _rng(seed, "squad", i)
        k = _draw(distractors_k, rng)
        rng.shuffle(siblings)
        own = (f"{q['title']} #{q['paragraph']}", context)
        dropped = i in no_oracle and not impossible
        chosen = siblings[: k + 1] if dropped else [own, *siblings[:k]]
        if not chosen:
            raise DataRowError(i, "no passages to show", src)
        rng.shuffle(chosen)
        has_answer = not impossible and not dropped
        cited = [n for n, p in enumerate(chosen, start=1) if p[0] == own[0]]
        docs = _documents(chosen)
        rows.append({
            "messages": build_messages(question, docs),
            "answer": grounded_answer(answers[0], cited) if has_answer else REFUSAL,
            "meta": {"source": "squad2", "index": i, "id": qa.get("id", str(i)),
                     "group": f"squad2:{q['article']}:{q['paragraph']}",
                     "has_oracle": has_answer, "is_impossible": impossible,
                     "oracle_passages": cited if has_answer else [],
                     "n_passages": len(chosen), "gold_answer": answers[0] if answers else "",
                     "question": question, "passages": [d.text for d in docs]},
        })
    return rows


# ------------------------------------------------------------------------------ HaluEval
#: HaluEval joins the supporting sentences of HotpotQA's paragraphs with no separator
#: ("...19th century.First for Women is..."): a sentence end followed at once by a capital.
_JOINED_RE = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))(?=[A-Z])")


#: A cut after an initial or a short abbreviation ("U.S.", "F.C.", "St.") is not a boundary.
_ABBREVIATION_END_RE = re.compile(r"(?:^|[\s.(\"'])(?:[A-Z]|St|Mr|Mrs|Dr|Jr|Co|No|Ph)\.[\"')]?$")


def knowledge_passages(knowledge: str) -> list[str]:
    """HaluEval's ``knowledge`` cut back into its supporting passages (cuts after an initial
    or abbreviation are joined back: "U." + "S. Highway 60." is one passage)."""
    out: list[str] = []
    glue = False
    for piece in _JOINED_RE.split(knowledge):
        if glue and out:
            out[-1] += piece
        elif piece.strip():
            out.append(piece)
        glue = bool(_ABBREVIATION_END_RE.search(piece.rstrip()))
    return [p.strip() for p in out if p.strip()]


def build_halueval_raft(halu_rows: Sequence[Row], distractors_k: Count = (1, 2),
                        p_no_answer: float = 0.25, seed: int = 42) -> list[Row]:
    """Grounded-QA rows from HaluEval QA (HotpotQA train questions with their supporting
    sentences): the question's passages plus ``distractors_k`` passages of other rows,
    shuffled; the target is the right answer citing the passages that hold it (all of the
    question's passages when none holds it verbatim, e.g. yes/no).

    In ``round(p_no_answer * n)`` rows (seeded), among those whose answer occurs verbatim in
    some but not all of its passages, the passages holding it are replaced by other rows'
    passages (same count) and the target is :data:`REFUSAL`: the other hop stays on topic
    but the answer is gone."""
    _check_count(distractors_k)
    pieces = [knowledge_passages(r["knowledge"]) for r in halu_rows]
    no_answer = _chosen(len(halu_rows), p_no_answer, seed, "halueval-no-answer")
    rows: list[Row] = []
    for i, item in enumerate(halu_rows):
        own = pieces[i]
        if not own:
            raise DataRowError(i, "empty 'knowledge'", "halueval")
        question, answer = item["question"].strip(), item["right_answer"].strip()
        rng = _rng(seed, "halueval", i)
        k = _draw(distractors_k, rng)
        holding = [p for p in own if _holds(p, answer)]
        drop = (i in no_answer and 0 < len(holding) < len(own)
                and answer.lower() not in _YES_NO)
        kept = [p for p in own if p not in holding] if drop else list(own)
        others = [j for j in range(len(halu_rows)) if j != i]
        rng.shuffle(others)
        need = k + (len(own) - len(kept))
        foreign = [p for j in others[: need * 2] for p in pieces[j]][:need]
        chosen = [(f"halueval {i}-{n}", t) for n, t in enumerate(kept)]
        chosen += [(f"other {i}-{n}", t) for n, t in enumerate(foreign)]
        rng.shuffle(chosen)
        if drop:
            target, cited = REFUSAL, []
        else:
            cited = [n for n, (_, t) in enumerate(chosen, start=1) if _holds(t, answer)]
            cited = cited or [n for n, (title, _) in enumerate(chosen, start=1)
                              if title.startswith("halueval ")]
            target = grounded_answer(answer, cited)
        rows.append({
            "messages": build_messages(question, _documents(chosen)),
            "answer": target,
            "meta": {"source": "halueval", "index": i, "row": item.get("meta_index", i),
                     "group": f"halueval:{item.get('meta_index', i)}", "has_oracle": not drop,
                     "variant": "answer-dropped" if drop else "oracle",
                     "oracle_passages": cited, "n_passages": len(chosen),
                     "gold_answer": answer},
        })
    return rows


def _pair(question: str, passage: str, relevant: bool, meta: dict[str, Any]) -> Row:
    return {"messages": relevance_messages(question, passage),
            "answer": RELEVANT if relevant else IRRELEVANT,
            "meta": {**meta, "label": int(relevant)}}


def build_relevance(hotpot_rows: Sequence[Row], msmarco: MsMarco | None = None, seed: int = 42,
                    positives_per_item: int = 2, msmarco_per_query: int = 8,
                    msmarco_min_relevant: int = 2, squad: Sequence[Row] | None = None,
                    squad_per_label: int | None = None, hotpot_rounds: int = 1,
                    squad_negatives: str = "unanswerable") -> list[Row]:
    """Balanced (question, passage) -> yes/no rows, shuffled by the seed.

    HotpotQA: per item up to ``positives_per_item`` gold paragraphs (relevant) and as many of
    its distractor paragraphs (hard negatives: same topic, retrieved for the question).
    ``hotpot_rounds`` > 1 pairs the gold paragraphs again with the next, unseen distractors
    (an item has 8), so more hard negatives are used while the labels stay balanced; a round
    runs only while the item has a full set of fresh distractors left.
    SQuAD 2.0 articles (optional), ``squad_per_label`` seeded questions of each label (default:
    as many as the smaller kind has). The relevant pair is an answerable question with its own
    paragraph. The irrelevant pair depends on ``squad_negatives``: "unanswerable" pairs an
    unanswerable question with its own paragraph (on topic, written to look answerable, but
    without the answer); "sibling" pairs an answerable question with another paragraph of the
    same article (on topic, without the answer: what a retriever's near miss looks like).
    MS MARCO (optional): per query up to ``msmarco_per_query`` pairs of each label, graded
    qrels ``>= msmarco_min_relevant`` relevant, judged below it irrelevant (in TREC-DL grading
    1 = "related but does not answer": hard negatives); balanced per query.
    """
    if not isinstance(hotpot_rounds, int) or isinstance(hotpot_rounds, bool) or hotpot_rounds < 1:
        raise InputError(f"hotpot_rounds must be a positive integer, got {hotpot_rounds!r}")
    if squad_negatives not in SQUAD_NEGATIVES:
        raise InputError(f"squad_negatives must be one of {SQUAD_NEGATIVES}, "
                         f"got {squad_negatives!r}")
    rows: list[Row] = []
    for i, item in enumerate(hotpot_rows):
        question, _, paragraphs, gold = _hotpot_item(item, i)
        rng = _rng(seed, "relevance", i)
        pos = [p for p in paragraphs if p[0] in gold]
        neg = [p for p in paragraphs if p[0] not in gold]
        rng.shuffle(pos)
        rng.shuffle(neg)
        if len(neg) < min(positives_per_item, len(pos)):
            neg += _foreign(hotpot_rows, i, rng, min(positives_per_item, len(pos)) - len(neg))
        n = min(positives_per_item, len(pos), len(neg))
        if n == 0:
            raise DataRowError(i, "needs a gold passage and a negative passage", "hotpotqa")
        group = f"hotpotqa:{item.get('id', i)}"
        for title, text in pos[:n]:
            rows.append(_pair(question, text, True, {"source": "hotpotqa", "index": i,
                                                     "group": group, "title": title}))
        for title, text in neg[:n]:
            rows.append(_pair(question, text, False, {"source": "hotpotqa", "index": i,
                                                      "group": group, "title": title}))
        for r in range(1, hotpot_rounds):
            fresh = neg[r * n:(r + 1) * n]
            if len(fresh) < n:
                break
            for (title, text), relevant in [*((p, True) for p in pos[:n]),
                                            *((p, False) for p in fresh)]:
                rows.append(_pair(question, text, relevant, {
                    "source": "hotpotqa", "index": i, "group": group, "title": title,
                    "round": r}))
    if squad is not None:
        rows.extend(_squad_relevance(squad, seed, squad_per_label, squad_negatives))
    if msmarco is not None:
        judged: dict[str, dict[str, list[str]]] = {}
        for j, (qid, did, score) in enumerate(msmarco.qrels):
            if qid not in msmarco.queries:
                raise DataRowError(j, f"query {qid!r} not in queries.jsonl", "msmarco qrels")
            if did not in msmarco.corpus:
                continue  # a BEIR subset keeps only part of the corpus: unjudgeable here
            key = "pos" if score >= msmarco_min_relevant else "neg"
            judged.setdefault(qid, {"pos": [], "neg": []})[key].append(did)
        for qid in sorted(judged):
            rng = _rng(seed, "msmarco", qid)
            pos, neg = sorted(judged[qid]["pos"]), sorted(judged[qid]["neg"])
            rng.shuffle(pos)
            rng.shuffle(neg)
            n = min(msmarco_per_query, len(pos), len(neg))
            meta = {"source": "msmarco", "query_id": qid, "group": f"msmarco:{qid}"}
            for did in pos[:n]:
                rows.append(_pair(msmarco.queries[qid], msmarco.corpus[did], True,
                                  {**meta, "doc_id": did}))
            for did in neg[:n]:
                rows.append(_pair(msmarco.queries[qid], msmarco.corpus[did], False,
                                  {**meta, "doc_id": did}))
    _rng(seed, "relevance-order").shuffle(rows)
    return rows


def _squad_relevance(articles: Sequence[Row], seed: int, per_label: int | None,
                     negatives: str = "unanswerable") -> list[Row]:
    """SQuAD 2.0 pairs for :func:`build_relevance`; error indexes count questions in file order."""
    kinds: dict[bool, list[int]] = {True: [], False: []}
    questions = _squad_questions(articles)
    for i, q in enumerate(questions):
        kinds[not q["qa"].get("is_impossible")].append(i)
    if negatives == "sibling":
        # every answerable question gives both pairs; per_label caps how many questions
        n = len(kinds[True]) if per_label is None else min(len(kinds[True]), per_label)
    else:
        n = min(len(kinds[True]), len(kinds[False]))
        n = n if per_label is None else min(n, per_label)
    if n == 0:
        needs = ("answerable questions" if negatives == "sibling"
                 else "answerable and unanswerable questions")
        raise DataRowError(0, f"needs {needs}", "squad2")

    def meta(i: int, q: dict[str, Any]) -> dict[str, Any]:
        return {"source": "squad2", "index": i, "id": q["qa"].get("id", str(i)),
                "group": f"squad2:{q['article']}:{q['paragraph']}"}

    rows = []
    for relevant in (True,) if negatives == "sibling" else (True, False):
        picks = list(kinds[relevant])
        _rng(seed, "squad-relevance", relevant).shuffle(picks)
        for i in sorted(picks[:n]):
            q = questions[i]
            rows.append(_pair(q["question"], q["context"], relevant, meta(i, q)))
            if negatives != "sibling":
                continue
            siblings = [text for _, text in _siblings(articles, q)]
            if not siblings:
                raise DataRowError(i, "article has no other paragraph for a negative", "squad2")
            other = _rng(seed, "squad-sibling", i).choice(siblings)
            rows.append(_pair(q["question"], other, False, {**meta(i, q), "sibling": True}))
    return rows


def split_rows(rows: Sequence[Row], eval_fraction: float, seed: int = 42) -> tuple[list[Row],
                                                                                  list[Row]]:
    """(train, eval) split by ``meta["group"]`` (one question's rows never straddle it):
    ``round(eval_fraction * groups)`` groups, picked by the seed, go to eval."""
    groups = sorted({str(r.get("meta", {}).get("group", i)) for i, r in enumerate(rows)})
    picked = {groups[j] for j in _chosen(len(groups), eval_fraction, seed, "eval-split")}
    train, held = [], []
    for i, r in enumerate(rows):
        (held if str(r.get("meta", {}).get("group", i)) in picked else train).append(r)
    return train, held


def validate_rows(rows: Sequence[Row], source: str = "rows") -> None:
    """Check rows have non-empty messages and a non-empty answer; raise naming the index."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataRowError(i, f"expected a dict, got {type(row).__name__}", source)
        if not isinstance(row.get("messages"), list) or not row["messages"]:
            raise DataRowError(i, "empty or missing 'messages'", source)
        if not isinstance(row.get("answer"), str) or not row["answer"].strip():
            raise DataRowError(i, "empty or missing 'answer'", source)
