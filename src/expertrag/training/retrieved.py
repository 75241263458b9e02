"""Grounded-QA training rows over *retrieved* passages: the prompts an answerer meets in use.

The RAFT builders of :mod:`expertrag.training.data` show a question its gold paragraph(s)
plus random distractors. At answer time the passages are the top-k of a retriever instead:
near-misses that share the question's words, the answer-holding passage anywhere in the list
or missing. These builders make rows of that shape, with the project's hybrid retriever
(BM25 + dense, RRF) over a pool of the source's own passages, in retrieval order:

- the target is the gold answer citing the retrieved passages that hold it when a gold
  passage holding it was retrieved (yes/no answers: every gold passage retrieved);
- the refusal when no retrieved passage holds it (the answer was not retrieved, the gold
  passages were withheld from the pool, or the question has no answer);
- no row when the answer string occurs only in a non-gold passage: a coincidental match
  (a year, a common name) would teach answering from a passage that does not support it.

Sources: SQuAD 2.0 articles (pool: every paragraph of the articles), HotpotQA train (pool:
each item's own 10 paragraphs, a share with the gold withheld, or every train paragraph: the
open setting), HaluEval (pool: every supporting passage of its rows, a share with the
answer-holding ones withheld). Deterministic for a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from expertrag.errors import InputError
from expertrag.evaluation.metrics import holds_answer, is_yes_no
from expertrag.experts.grounded_qa import REFUSAL, build_messages
from expertrag.training.data import (
    Count,
    DataRowError,
    Row,
    _check_count,
    _chosen,
    _draw,
    _hotpot_item,
    _rng,
    _squad_questions,
    grounded_answer,
    knowledge_passages,
)
from expertrag.types import Document


def retrieved_row(question: str, answers: Sequence[str], passages: Sequence[Document],
                  gold: set[str], meta: dict[str, Any]) -> Row | None:
    """One row over ``passages`` (in the order given): the first of ``answers`` citing every
    retrieved gold passage once one of them holds it (a bridge paragraph supports the answer
    too, as in the RAFT rows), the refusal when no passage holds any answer, or None when
    only non-gold passages hold it. ``gold``: the gold passages' texts (stripped)."""
    texts = [p.text.strip() for p in passages]
    cited = [n for n, t in enumerate(texts, 1) if t in gold]
    if answers and is_yes_no(answers):
        present = bool(gold) and gold <= set(texts)
        ambiguous = False
    else:
        holding = [n for n, t in enumerate(texts, 1) if answers and holds_answer(t, answers)]
        present = any(n in cited for n in holding)
        ambiguous = bool(holding) and not present
    if ambiguous:
        return None
    return {"messages": build_messages(question, passages),
            "answer": grounded_answer(answers[0], cited) if present else REFUSAL,
            "meta": {**meta, "has_oracle": present, "oracle_passages": cited if present else [],
                     "n_passages": len(passages), "question": question,
                     "passages": texts, "gold_answer": answers[0] if answers else ""}}


def _hybrid(docs: Sequence[Document], embedder: Any) -> Any:
    from expertrag.retrieval.hybrid import HybridRetriever

    return HybridRetriever(list(docs), embedder=embedder)


def _top(retriever: Any, question: str, k: int, withheld: set[str] | None = None
         ) -> list[Document]:
    """The top ``k`` passages, skipping the ``withheld`` texts (retrieving more to make up)."""
    extra = len(withheld or ())
    found = retriever.retrieve(question, k + extra)
    return [d for d in found if not withheld or d.text.strip() not in withheld][:k]


def build_squad_retrieved(articles: Sequence[Row], embedder: Any, k: Count = 5, seed: int = 42,
                          max_answerable: int | None = None, max_impossible: int | None = 0,
                          answer: str = "longest", max_answer_words: int = 8) -> list[Row]:
    """SQuAD 2.0 questions over the top-``k`` paragraphs of all ``articles``. ``answer``:
    "first" annotator answer or the "longest" within ``max_answer_words`` (whole phrases,
    not fragments). Unanswerable questions (``max_impossible`` of them, seeded) target the
    refusal; they are written to look answerable, so use few."""
    _check_count(k, "k")
    if answer not in ("first", "longest"):
        raise InputError(f"answer must be 'first' or 'longest', got {answer!r}")
    questions = _squad_questions(articles)
    pool = [Document(text=text, id=f"{a}:{n}", metadata={"title": art.get("title", "")})
            for a, art in enumerate(articles)
            for n, para in enumerate(art.get("paragraphs") or [])
            if (text := str(para.get("context", "")).strip())]
    picks: dict[bool, list[int]] = {True: [], False: []}
    for i, q in enumerate(questions):
        picks[bool(q["qa"].get("is_impossible"))].append(i)
    keep = []
    for impossible, cap in ((False, max_answerable), (True, max_impossible)):
        chosen = picks[impossible]
        _rng(seed, "squad-retrieved", impossible).shuffle(chosen)
        keep += chosen if cap is None else chosen[:cap]
    retriever = _hybrid(pool, embedder)
    rows = []
    for i in sorted(keep):
        q = questions[i]
        qa = q["qa"]
        answers = [] if qa.get("is_impossible") else [
            str(a.get("text", "")).strip() for a in qa.get("answers") or []
            if str(a.get("text", "")).strip()]
        if not qa.get("is_impossible") and not answers:
            raise DataRowError(i, "answerable question with no answer text", "squad2")
        if answer == "longest" and answers:
            fitting = [a for a in answers if len(a.split()) <= max_answer_words]
            best = max(fitting or answers[:1], key=len)
            answers = [best, *(a for a in answers if a != best)]
        passages = _top(retriever, q["question"], _draw(k, _rng(seed, "squad-k", i)))
        row = retrieved_row(q["question"], answers, passages, {q["context"]}, {
            "source": "squad2", "index": i, "id": qa.get("id", str(i)),
            "group": f"squad2:{q['article']}:{q['paragraph']}",
            "is_impossible": bool(qa.get("is_impossible")), "variant": "retrieved"})
        if row is not None:
            rows.append(row)
    return rows


def build_hotpot_retrieved(hotpot_rows: Sequence[Row], embedder: Any, k: Count = 5,
                           seed: int = 42, p_withheld: float = 0.5,
                           open_pool: bool = False) -> list[Row]:
    """HotpotQA items over the top-``k`` of their own 10 paragraphs (the distractor setting;
    in ``p_withheld`` of the items, seeded, the gold paragraphs are withheld: refusal rows),
    or with ``open_pool`` over every paragraph of ``hotpot_rows`` (the open setting)."""
    _check_count(k, "k")
    items = [_hotpot_item(row, i) for i, row in enumerate(hotpot_rows)]
    withheld = set() if open_pool else _chosen(len(items), p_withheld, seed, "hotpot-withheld")
    shared = None
    if open_pool:
        pool = {text.strip(): Document(text=text, id=title, metadata={"title": title})
                for _, _, paragraphs, _ in items for title, text in paragraphs}
        shared = _hybrid(list(pool.values()), embedder)
    elif hasattr(embedder, "embed_documents"):  # one batched pass for every item's pool
        embedder.embed_documents([t for _, _, ps, _ in items for _, t in ps])
    rows = []
    for i, (question, answer, paragraphs, gold_titles) in enumerate(items):
        gold = {t.strip() for title, t in paragraphs if title in gold_titles}
        retriever = shared or _hybrid(
            [Document(text=t, id=title, metadata={"title": title}) for title, t in paragraphs],
            embedder)
        hidden = gold if i in withheld else None
        passages = _top(retriever, question, _draw(k, _rng(seed, "hotpot-k", i)), hidden)
        key = hotpot_rows[i].get("id", str(i))
        row = retrieved_row(question, [answer] if hidden is None else [], passages, gold, {
            "source": "hotpotqa", "index": i, "id": key, "group": f"hotpotqa:{key}",
            "type": hotpot_rows[i].get("type"),
            "variant": "open" if open_pool else "withheld" if hidden else "retrieved"})
        if row is not None:
            rows.append(row)
    return rows


def build_halueval_retrieved(halu_rows: Sequence[Row], embedder: Any, k: Count = 5,
                             seed: int = 42, p_withheld: float = 0.2) -> list[Row]:
    """HaluEval questions over the top-``k`` of every row's supporting passages pooled; in
    ``p_withheld`` of the rows (seeded) the passages holding the answer are withheld."""
    _check_count(k, "k")
    own = [knowledge_passages(r["knowledge"]) for r in halu_rows]
    pool = {t.strip(): Document(text=t, id=f"halueval {i}-{n}")
            for i, ps in enumerate(own) for n, t in enumerate(ps)}
    retriever = _hybrid(list(pool.values()), embedder)
    withheld = _chosen(len(halu_rows), p_withheld, seed, "halueval-withheld")
    rows = []
    for i, item in enumerate(halu_rows):
        if not own[i]:
            raise DataRowError(i, "empty 'knowledge'", "halueval")
        question, answer = item["question"].strip(), item["right_answer"].strip()
        gold = {t.strip() for t in own[i]}
        hidden = ({t for t in gold if holds_answer(t, answer)}
                  if i in withheld and not is_yes_no(answer) else None)
        passages = _top(retriever, question, _draw(k, _rng(seed, "halueval-k", i)), hidden)
        row = retrieved_row(question, [] if hidden else [answer], passages, gold, {
            "source": "halueval", "index": i, "row": item.get("meta_index", i),
            "group": f"halueval:{item.get('meta_index', i)}",
            "variant": "withheld" if hidden else "retrieved"})
        if row is not None:
            rows.append(row)
    return rows
