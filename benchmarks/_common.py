"""What the benchmark scripts share: the markdown table they print, number formatting, the
HotpotQA and MuSiQue set-ups of the chain benchmarks (bench_chains.py, crag_contexts.py,
selfrag_candidates.py, tune_crag.py) and the small CRAG corpus of the speed benchmarks
(bench_serving.py, bench_llm.py). A script imports it as ``from _common import ...``: the
folder of the script being run is on ``sys.path``.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from expertrag.evaluation.answer_sets import PerQuestionRetriever

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- tables
def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Print a markdown table."""
    print(table(header, rows))


def fmt(v: float) -> str:
    """A figure with three decimals, ``-`` for NaN (nothing to measure)."""
    return "-" if math.isnan(v) else f"{v:.3f}"


# ---------------------------------------------------------------------------- chain set-ups
def hotpot_setup(data_dir: Path, n: int, embedder: Any, k: int,
                 start: int = 120) -> tuple[list[Any], PerQuestionRetriever, Any, list[bool]]:
    from expertrag.datasets import HOTPOT_TEST, load_hotpot_test
    from expertrag.evaluation.answer_sets import PerQuestionRetriever
    from expertrag.evaluation.datasets import hotpot_items
    from expertrag.retrieval.hybrid import HybridRetriever

    rows = load_hotpot_test(data_dir / HOTPOT_TEST)
    items = hotpot_items(rows[start:start + n])
    rng = random.Random("bench-chains-removed")
    removed = set(rng.sample(range(len(items)), len(items) // 2))
    has_answer = [i not in removed for i in range(len(items))]
    retrievers = {}
    pool = []
    for i, item in enumerate(items):
        docs = item.distractors + (item.gold if has_answer[i] else [])
        retrievers[item.question] = HybridRetriever(docs, embedder=embedder, k=k)
        if not has_answer[i]:
            pool += item.gold
    # the external corpus: the removed gold paragraphs among other items' paragraphs
    others = hotpot_items(rows[300:400])
    pool += [d for it in others for d in it.gold + it.distractors]
    external = HybridRetriever(pool, embedder=embedder, k=k)
    return items, PerQuestionRetriever(retrievers), external, has_answer


def musique_setup(data_dir: Path, n: int, embedder: Any, k: int) -> tuple[list[Any], Any]:
    from expertrag.datasets import (
        MUSIQUE_CORPUS,
        MUSIQUE_QUESTIONS,
        load_musique,
        load_musique_corpus,
    )
    from expertrag.evaluation.datasets import musique_items
    from expertrag.retrieval.hybrid import HybridRetriever
    from expertrag.types import Document

    items = musique_items(load_musique(data_dir / MUSIQUE_QUESTIONS))[:n]
    corpus = load_musique_corpus(data_dir / MUSIQUE_CORPUS)
    docs = [Document(text=c["text"], id=f"m{i}", metadata={"title": c.get("title", "")})
            for i, c in enumerate(corpus)]
    return items, HybridRetriever(docs, embedder=embedder, k=k)


def answer_text(result: Any) -> str:
    """The answer of any system's result: a chain's ``answer``, naive RAG's or a generation's
    ``text``."""
    return getattr(result, "answer", None) or getattr(result, "text", "")


def figures(results: list[Any], items: list[Any], has_answer: list[bool],
            seconds: float) -> dict[str, float]:
    from expertrag.evaluation.datasets import answer_correct
    from expertrag.experts.grounded_qa import is_refusal

    texts = [answer_text(r) for r in results]
    pos = [i for i, h in enumerate(has_answer) if h]
    neg = [i for i, h in enumerate(has_answer) if not h]
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    rows = []
    for r in results:
        calls = getattr(r, "calls", None)
        if calls is None:  # RAGPipeline: one generated answer per question, nothing scored
            rows.append(1)
        else:
            rows.append(sum(v for key, v in calls.items() if not key.endswith("_tokens")))
    return {"accuracy": mean([answer_correct(texts[i], items[i]) for i in pos]),
            "refusal_accuracy": mean([is_refusal(texts[i]) for i in neg]),
            "false_refusals": mean([is_refusal(texts[i]) for i in pos]),
            "rows_per_question": mean(rows), "seconds_per_question": seconds / len(results)}


def recovered(results: list[Any], items: list[Any], has_answer: list[bool]) -> float:
    """The share of the questions without their gold paragraphs that were answered right."""
    from expertrag.evaluation.datasets import answer_correct

    lost = [i for i, h in enumerate(has_answer) if not h]
    texts = [answer_text(r) for r in results]
    return (sum(answer_correct(texts[i], items[i]) for i in lost) / len(lost)
            if lost else float("nan"))


def gold_retrieved(retrieved: list[list[Any]], items: list[Any]) -> list[bool]:
    """Per question, whether any of its gold paragraphs is among the retrieved documents
    (matched by text)."""
    golds = [{g.text.strip() for g in item.gold} for item in items]
    return [any(d.text.strip() in gold for d in docs)
            for docs, gold in zip(retrieved, golds, strict=True)]


# ---------------------------------------------------------------------------- a small CRAG
CRAG_CORPUS = [
    "The Saltmere Head lighthouse was built in 1862 on the northern cliffs.",
    "The annual membership fee is 45 euros for adults.",
    "Lantern Night is held on the third Saturday of August.",
    "Bread is baked from flour, water, salt and yeast.",
    "The foghorn sounds two blasts every thirty seconds in poor visibility.",
]
#: chat prompts whose answers run long (the speed benchmarks: bench_serving.py,
#: bench_backends.py), so every side decodes up to its token limit
SPEED_PROMPTS = [
    "Count from 1 to 200, separated by commas.",
    "List the numbers from 500 to 700, one per line.",
    "Write the alphabet from A to Z, then again in lower case.",
    "Write a long story about a lighthouse keeper and a storm.",
    "Explain in detail how a steam engine works, step by step.",
    "Count backwards from 300 to 1, separated by spaces.",
    "Describe every planet of the solar system in detail.",
    "Write a long poem about the sea.",
]

CRAG_QUESTIONS = ["When was the Saltmere Head lighthouse built?",
                  "What is the annual membership fee for adults?",
                  "When is Lantern Night held?", "Who won the 1998 World Cup?"]


def crag_chain(llm: Any) -> Any:
    """A corrective-RAG chain (retrieve, grade, generate) over a five-passage corpus, with
    the embedded embedder's hybrid retriever (bench_serving.py, bench_llm.py)."""
    from expertrag.chains import CorrectiveRAG
    from expertrag.embeddings import Embedder
    from expertrag.retrieval.hybrid import HybridRetriever
    from expertrag.types import Document

    retriever = HybridRetriever([Document(t, id=str(i)) for i, t in enumerate(CRAG_CORPUS)],
                                embedder=Embedder(), k=3)
    return CorrectiveRAG(llm, retriever)
