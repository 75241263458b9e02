"""The ``expertrag`` command: ingest a folder, ask grounded questions, or run the demo.

Errors raised by expertrag itself (bad input, empty collection, unknown expert...) print a
single ``error: ...`` line to stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertrag import __version__
from expertrag.errors import ExpertError, ExpertRAGError, UnknownExpertError
from expertrag.ingest import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, ingest_folder
from expertrag.retrieval.store import DEFAULT_COLLECTION, DEFAULT_DB_PATH

if TYPE_CHECKING:  # pragma: no cover
    from expertrag.rag import Answer
    from expertrag.retrieval import VectorStore

GROUNDED_EXPERT = "grounded-qa"
DEFAULT_LLM = "smollm2-135m-instruct"
_SNIPPET_CHARS = 100


# -- factories (tests replace these with fakes) -----------------------------------------------
def make_store(db: str, collection: str) -> VectorStore:
    """Open the persistent vector store at ``db`` with the default embedder."""
    from expertrag.retrieval import VectorStore

    return VectorStore(path=db, collection=collection)


def make_llm(model: str, server: str | None = None, dtype: str | None = None) -> Any:
    """Build the LLM: in-process (loaded now, so a missing model fails before any work;
    ``dtype`` None picks bf16 on a CPU with native bf16, else fp32), or a client of the
    multi-LoRA server at ``server`` (or ``$EXPERTRAG_SERVER_URL``)."""
    import os

    from expertrag.models.server import ENV_URL

    url = server or os.environ.get(ENV_URL)
    if url:
        from expertrag.models.server import ServerLLM

        return ServerLLM(url)
    from expertrag.models.llm import ExpertLLM

    return ExpertLLM.from_pretrained(model=model, dtype=dtype)


def shipped_experts() -> dict[str, Any]:
    """Experts packaged with expertrag as ``{name: source}``; empty when none are shipped."""
    try:
        from expertrag.experts import shipped_experts as _shipped
    except ImportError:
        return {}
    found = _shipped()
    if isinstance(found, Mapping):
        return dict(found)
    out: dict[str, Any] = {}
    for item in found or []:
        if isinstance(item, str):
            out[item] = item
        else:
            out[str(getattr(item, "name", item))] = item
    return out


def _attach(llm: Any, name: str, source: Any) -> None:
    for method in ("attach_expert", "load_expert", "add_expert", "attach"):
        fn = getattr(llm, method, None)
        if callable(fn):
            fn(name, source)
            return
    raise ExpertError(f"this LLM cannot attach experts (expert {name!r})")


def choose_expert(llm: Any, requested: str | None) -> str | None:
    """The expert to answer with: ``requested`` if given, else ``grounded-qa`` when it is
    attached or shipped (and attaches), else None (the base model)."""
    name = requested or GROUNDED_EXPERT
    if name in list(getattr(llm, "experts", None) or []):
        return name
    shipped = shipped_experts()
    if name in shipped:
        try:
            _attach(llm, name, shipped[name])
        except ExpertRAGError as exc:
            if requested:
                raise
            print(f"warning: not using expert {name!r}: {exc}", file=sys.stderr)
            return None
        return name
    attached = getattr(llm, "experts", None)
    if requested and attached is not None:
        choices = sorted({*list(attached), *shipped})
        have = ", ".join(choices) if choices else "none (attach one with add_expert)"
        raise UnknownExpertError(f"unknown expert {requested!r}; choose one of: {have}")
    # Unknown to us, and the LLM cannot list its experts: it names the problem itself.
    return requested


# -- output ---------------------------------------------------------------------------------
def _snippet(text: str, limit: int = _SNIPPET_CHARS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _citation_dict(doc: Any) -> dict[str, Any]:
    meta = doc.metadata or {}
    return {
        "passage": meta.get("passage"),
        "id": doc.id,
        "source": meta.get("source"),
        "chunk": meta.get("chunk_index"),
        "score": doc.score,
        "cited": meta.get("cited"),
        "text": doc.text,
    }


def answer_to_dict(answer: Answer) -> dict[str, Any]:
    """A JSON-ready view of an answer."""
    return {
        "question": answer.question,
        "answer": answer.text,
        "expert": answer.expert,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "citations": [_citation_dict(d) for d in answer.citations],
        "evidence": answer.evidence,
    }


def format_answer(answer: Answer) -> str:
    """Human-readable answer with its numbered citations (source, chunk, snippet)."""
    lines = [f"Q: {answer.question}", f"A: {answer.text or '(no answer)'}"]
    cited = any((d.metadata or {}).get("cited") for d in answer.citations)
    lines.append("   sources:" if cited else "   retrieved passages (none cited):")
    for doc in answer.citations:
        meta = doc.metadata or {}
        where = f"{meta.get('source', doc.id)}, chunk {meta.get('chunk_index', '?')}"
        lines.append(f'   [{meta.get("passage", "?")}] {where}: "{_snippet(doc.text)}"')
    if answer.evidence is not None:
        best = max(answer.evidence, default=0.0)
        stopped = " (below the evidence floor: refused without generating)" \
            if answer.completion_tokens == 0 else ""
        lines.append(f"   best passage P(relevant) {best:.2f}{stopped}")
    model = f"expert {answer.expert}" if answer.expert else "base model"
    lines.append(
        f"   ({model}; {answer.prompt_tokens} prompt + {answer.completion_tokens} "
        "completion tokens)"
    )
    return "\n".join(lines)


def _print_answers(answers: Sequence[Answer], as_json: bool) -> None:
    if as_json:
        print(json.dumps([answer_to_dict(a) for a in answers], indent=2, ensure_ascii=False))
        return
    print("\n\n".join(format_answer(a) for a in answers))


# -- commands -------------------------------------------------------------------------------
def _answer(args: argparse.Namespace, store: VectorStore, questions: list[str]) -> list[Answer]:
    from expertrag.rag import RAGPipeline

    llm = make_llm(args.model, getattr(args, "server", None), dtype=getattr(args, "dtype", None))
    expert = choose_expert(llm, args.expert)
    pipeline = RAGPipeline(llm, store, k=args.k, expert=expert, max_new_tokens=args.max_new_tokens,
                           evidence_gate="auto" if getattr(args, "evidence_gate", False) else None)
    if len(questions) == 1:
        return [pipeline.answer(questions[0])]
    return pipeline.answer_many(questions)


def cmd_ingest(args: argparse.Namespace) -> int:
    store = make_store(args.db, args.collection)
    report = ingest_folder(
        args.folder,
        store,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        progress=not args.quiet,
        skip_invalid=args.skip_invalid,
    )
    stale = f", removed {report.removed} stale chunks" if report.removed else ""
    print(
        f"ingested {report.files} files as {report.chunks} chunks into {args.db} "
        f"(collection {args.collection!r}, {store.count()} chunks in total{stale})"
    )
    if report.skipped:
        print(f"skipped {len(report.skipped)} files that cannot be ingested:")
        for name, reason in report.skipped:
            print(f"  {name} {reason}")
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from expertrag.errors import EmptyCollectionError, InputError

    questions = [q.strip() for q in args.question]
    for i, q in enumerate(questions):
        if not q:
            raise InputError(f"question {i + 1} is empty")
    if not Path(args.db).exists():  # do not create an empty database as a side effect
        raise EmptyCollectionError(
            f"no database at {args.db}: ingest documents first with `expertrag ingest FOLDER`"
        )
    store = make_store(args.db, args.collection)
    if store.count() == 0:  # fail before loading a model
        raise EmptyCollectionError(
            f"collection {args.collection!r} in {args.db} is empty: "
            "ingest documents first with `expertrag ingest FOLDER`"
        )
    _print_answers(_answer(args, store, questions), args.json)
    return 0


def sample_questions() -> list[str]:
    """The packaged sample questions, one per line."""
    text = (resources.files("expertrag") / "data" / "sample_questions.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def sample_answers() -> dict[str, list[list[str]]]:
    """Expected answers to the sample questions: per question, alternatives, each a list of
    strings that a right answer contains (case-insensitive)."""
    text = (resources.files("expertrag") / "data" / "sample_answers.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def check_sample_answer(question: str, text: str) -> bool | None:
    """Whether ``text`` answers sample question ``question`` (None: no expected answer)."""
    expected = sample_answers().get(question)
    if expected is None:
        return None
    low = text.lower()
    return any(all(part.lower() in low for part in alt) for alt in expected)


def cmd_demo(args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        corpus = stack.enter_context(
            resources.as_file(resources.files("expertrag") / "data" / "sample_corpus")
        )
        db = args.db or stack.enter_context(
            tempfile.TemporaryDirectory(prefix="expertrag-demo-", ignore_cleanup_errors=True)
        )
        store = make_store(str(db), args.collection)
        report = ingest_folder(Path(corpus), store, progress=not args.quiet)
        print(
            f"demo: ingested {report.files} sample documents as {report.chunks} chunks\n",
            file=sys.stderr if args.json else sys.stdout,  # keep --json output parseable
        )
        answers = _answer(args, store, sample_questions())
        _print_answers(answers, args.json)
        right = [check_sample_answer(a.question, a.text) for a in answers]
        cited = sum(bool(ok) and any(d.metadata.get("cited") for d in a.citations)
                    for ok, a in zip(right, answers, strict=True))
        print(f"\ndemo: {sum(bool(r) for r in right)} of {len(answers)} answers are right, "
              f"{cited} of them with citations",
              file=sys.stderr if args.json else sys.stdout)
    return 0


# -- parser ---------------------------------------------------------------------------------
def _add_store_args(p: argparse.ArgumentParser, db_default: str | None = DEFAULT_DB_PATH) -> None:
    p.add_argument("--db", default=db_default, help="Chroma folder (default: %(default)s)")
    p.add_argument("--collection", default=DEFAULT_COLLECTION, help="collection name")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=4, help="passages to retrieve (default: 4)")
    p.add_argument("--expert", default=None, help="LoRA expert to answer with")
    p.add_argument("--model", default=DEFAULT_LLM, help="LLM alias, path or HF id")
    p.add_argument("--server", default=None, metavar="URL",
                   help="answer through an OpenAI-compatible multi-LoRA server (vLLM) at URL "
                        "instead of in-process (default: $EXPERTRAG_SERVER_URL if set)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight dtype (default auto: bfloat16 on a CPU with native bf16 or a "
                        "GPU, else float32)")
    p.add_argument("--max-new-tokens", type=int, default=192, help="answer length limit")
    p.add_argument("--evidence-gate", action="store_true",
                   help="refuse without generating when no passage clears the expert's "
                        "calibrated relevance floor (grounded-qa ships one)")
    p.add_argument("--json", action="store_true", help="print answers as JSON")


_EXAMPLES = {
    None: """examples:
  expertrag demo                                  # answer sample questions, offline
  expertrag ingest docs/                          # index a folder of .txt/.md files
  expertrag ask "What is the annual fee?"         # answer from the indexed folder
  expertrag <command> --help                      # options of one command""",
    "ingest": """examples:
  expertrag ingest docs/
  expertrag ingest docs/ --db ./kb --collection handbook
  expertrag ingest docs/ --skip-invalid           # leave out files that are not UTF-8""",
    "ask": """examples:
  expertrag ask "What is the annual fee?"
  expertrag ask "Who built it?" "When?" --k 6 --json
  expertrag ask "What is the annual fee?" --expert grounded-qa""",
    "demo": """examples:
  expertrag demo
  expertrag demo --json > answers.json""",
}


def _sub_parser(sub: Any, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:]
                          + ".", epilog=_EXAMPLES[name],
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``expertrag`` command."""
    parser = argparse.ArgumentParser(
        prog="expertrag", description="Grounded question answering with small local models.",
        epilog=_EXAMPLES[None], formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"expertrag {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _sub_parser(sub, "ingest", "chunk and index a folder of .txt/.md files")
    p.add_argument("folder", help="folder to ingest (recursively)")
    _add_store_args(p)
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--chunk-overlap", type=int, default=DEFAULT_CHUNK_OVERLAP)
    p.add_argument("--skip-invalid", action="store_true",
                   help="ingest the readable files and list the ones left out (not UTF-8, "
                        "empty); by default any such file refuses the whole folder")
    p.set_defaults(func=cmd_ingest)

    p = _sub_parser(sub, "ask", "answer questions from an ingested collection")
    p.add_argument("question", nargs="+", help="one or more questions (quote each)")
    _add_store_args(p)
    _add_llm_args(p)
    p.set_defaults(func=cmd_ask)

    p = _sub_parser(sub, "demo", "ingest the sample corpus and answer sample questions")
    _add_store_args(p, db_default=None)
    _add_llm_args(p)
    p.set_defaults(func=cmd_demo)

    from expertrag.evaluation.cli import add_eval_subcommand
    from expertrag.training.cli import add_train_subcommand

    add_train_subcommand(sub)
    add_eval_subcommand(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``expertrag`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ExpertRAGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
