"""The ``expertrag`` command: ingest a folder, ask grounded questions, or run the demo.

Errors raised by expertrag itself (bad input, empty collection, unknown expert...) print a
single ``error: ...`` line to stderr and exit with status 2, without a traceback. Several
questions are answered one result each: a question that fails gets its own error (numbered
as on the command line, from 1) and the others are still answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from expertrag import __version__
from expertrag.errors import (
    ContextWindowExceededError,
    EmptyCollectionError,
    ExpertError,
    ExpertRAGError,
    InputError,
    UnknownExpertError,
)
from expertrag.experts import GROUNDED_QA, ensure_attached
from expertrag.ingest import DEFAULT_CHUNK_OVERLAP, DEFAULT_CHUNK_SIZE, ingest_folder
from expertrag.retrieval.store import DEFAULT_COLLECTION, DEFAULT_DB_PATH

if TYPE_CHECKING:  # pragma: no cover
    from expertrag.chains.naive import Answer
    from expertrag.models.interface import ExpertModel
    from expertrag.retrieval import VectorStore

GROUNDED_EXPERT = GROUNDED_QA
DEFAULT_LLM = "smollm2-135m-instruct"
_SNIPPET_CHARS = 100
_ASK_BATCH = 8  # questions per batched generate call (and per progress step)
_LISTED = 20  # files listed per ingest category without --verbose


# -- factories (tests replace these with fakes) -----------------------------------------------
def make_store(db: str, collection: str, *, read_only: bool = False,
               embedding_model: str | None = None) -> VectorStore:
    """Open the persistent vector store at ``db``: read-only for answering (a missing
    database or collection is an error, nothing is created), embedding with
    ``embedding_model`` or the model the collection was ingested with
    (:func:`~expertrag.retrieval.open_store`)."""
    from expertrag.retrieval import open_store

    return open_store(db, collection, read_only=read_only, embedding_model=embedding_model)


BACKENDS = ("inprocess", "server", "llamacpp")


def make_llm(model: str, server: str | None = None, dtype: str | None = None,
             backend: str | None = None, layout: str | None = None) -> ExpertModel:
    """Build the LLM for ``backend``: ``inprocess`` (loaded now, so a missing model fails
    before any work; ``dtype`` None picks bf16 on a CPU with native bf16, else fp32),
    ``server`` (a client of the multi-LoRA server at ``server`` or ``$EXPERTRAG_SERVER_URL``;
    the default whenever a URL is given), or ``llamacpp`` (llama-server: the one at
    ``server`` if given, else one started now on ``model`` with the shipped experts, served
    as ``layout``: ``lora`` or ``merged``, see :meth:`LlamaCppLLM.start`)."""
    import os

    from expertrag.models.server import ENV_URL

    if backend not in (None, *BACKENDS):
        raise InputError(f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if layout not in (None, "lora") and (backend != "llamacpp" or server):
        raise InputError(f"--layout {layout} applies to a llama-server started here "
                         "(--backend llamacpp without --server)")
    if backend == "llamacpp":
        from expertrag.models.llamacpp import LlamaCppLLM

        if server:
            return LlamaCppLLM(server)
        weights = {None: "gguf", "auto": "gguf", "float32": "f32", "float16": "f16"}.get(dtype)
        if weights is None:
            raise InputError(f"--backend llamacpp serves the GGUF as it is (default), float32 "
                             f"or float16, not {dtype!r}")
        return LlamaCppLLM.start(model=model, weights=weights, layout=layout or "lora")
    url = server or os.environ.get(ENV_URL)
    if backend == "server" and not url:
        raise InputError(f"--backend server needs --server URL (or ${ENV_URL})")
    if url and backend != "inprocess":
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


def _attached(llm: ExpertModel) -> list[str] | None:
    """The experts ``llm`` serves, or None for a stand-in that cannot list them."""
    experts = getattr(llm, "experts", None)
    return None if experts is None else list(experts)


def expert_folder(requested: str) -> tuple[str, Path] | None:
    """``(name, folder)`` when ``requested`` is an adapter folder (what ``expertrag train
    --output`` writes); the name comes from its card (``expertrag_expert.json``), else the
    folder's name. None when it is not a path; a path without an adapter is an error."""
    from expertrag.experts.card import ExpertCard

    path = Path(requested).expanduser()
    looks_like_path = os.sep in requested or "/" in requested or requested.startswith(("~", "."))
    if not path.exists():
        if looks_like_path:
            raise ExpertError(f"--expert {requested}: no such adapter folder (nor an expert "
                              "of that name); pass a shipped expert's name or the folder "
                              "`expertrag train --output` wrote")
        return None
    if not path.is_dir() or not (path / "adapter_config.json").is_file():
        raise ExpertError(f"--expert {requested}: not an adapter folder (it holds no "
                          "adapter_config.json); pass the folder `expertrag train --output` "
                          "wrote")
    try:
        card = ExpertCard.read(path)
    except ExpertError as exc:
        raise ExpertError(f"--expert {requested}: {exc}") from exc
    return card.name or path.resolve().name, path


def choose_expert(llm: ExpertModel, requested: str | None) -> str | None:
    """The expert to answer with: ``requested`` (a name, or an adapter folder, attached
    under its card's name) if given, else ``grounded-qa`` when it is attached or shipped (and
    attaches), else None (the base model)."""
    if requested:
        folder = expert_folder(requested)
        if folder is not None:
            name, path = folder
            return ensure_attached(llm, name, {name: path})
    name = requested or GROUNDED_EXPERT
    if name in (_attached(llm) or []):
        return name
    shipped = shipped_experts()
    if name in shipped:
        try:
            ensure_attached(llm, name, shipped)
        except ExpertRAGError as exc:
            if requested:
                raise
            print(f"warning: not using expert {name!r}: {exc}", file=sys.stderr)
            return None
        return name
    attached = _attached(llm)
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


def _where(meta: dict[str, Any], doc_id: str | None) -> str:
    """A chunk's file as a reader knows it: the folder's name (or the source name) and the
    path inside it."""
    source = meta.get("source", doc_id)
    root = meta.get("root")
    return f"{Path(str(root)).name or root}/{source}" if root else str(source)


def _citation_dict(doc: Any) -> dict[str, Any]:
    meta = doc.metadata or {}
    return {
        "passage": meta.get("passage"),
        "id": doc.id,
        "source": meta.get("source"),
        "root": meta.get("root"),
        "path": meta.get("path"),
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
        where = f"{_where(meta, doc.id)}, chunk {meta.get('chunk_index', '?')}"
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


@dataclass
class QuestionResult:
    """One question's outcome: its answer, or the error that stopped it."""

    number: int  # 1-based, as on the command line
    question: str
    answer: Answer | None = None
    error: ExpertRAGError | None = None

    def to_dict(self) -> dict[str, Any]:
        """One ``--json`` entry: the answer's fields and ``error`` (None, or its type and
        message)."""
        if self.answer is not None:
            return {"number": self.number, **answer_to_dict(self.answer), "error": None}
        assert self.error is not None
        return {"number": self.number, "question": self.question, "answer": None,
                "citations": [], "error": {"type": type(self.error).__name__,
                                           "message": str(self.error)}}


def _question_error(number: int, exc: ExpertRAGError) -> ExpertRAGError:
    """The same error, its message prefixed with the question's number (and a hint)."""
    hint = ""
    if isinstance(exc, ContextWindowExceededError):
        hint = " (retrieve fewer passages with --k, or ingest with a smaller --chunk-size)"
    out = type(exc).__new__(type(exc))
    out.__dict__.update(exc.__dict__)
    out.args = (f"question {number}: {exc}{hint}",)
    return out


def answer_questions(pipeline: Any, questions: Sequence[str], progress: bool = False,
                     batch: int = _ASK_BATCH) -> list[QuestionResult]:
    """Answer each question, ``batch`` at a time in one batched call; a batch that fails
    is answered again one question at a time, so that only the bad question fails."""
    from tqdm.auto import tqdm

    results = [QuestionResult(n, q) for n, q in enumerate(questions, start=1)]
    todo = []
    for r in results:
        if not isinstance(r.question, str) or not r.question.strip():
            r.error = InputError(f"question {r.number} is empty")
        else:
            r.question = r.question.strip()
            todo.append(r)
    with tqdm(total=len(todo), desc="answering", unit="question",
              disable=not progress or len(todo) < 2, leave=False) as bar:
        for start in range(0, len(todo), batch):
            group = todo[start:start + batch]
            try:
                answers = pipeline.answer_many([r.question for r in group])
                for r, a in zip(group, answers, strict=True):
                    r.answer = a
            except ExpertRAGError:
                for r in group:
                    try:
                        (r.answer,) = pipeline.answer_many([r.question])
                    except ExpertRAGError as exc:
                        r.error = _question_error(r.number, exc)
            bar.update(len(group))
    return results


def _print_results(results: Sequence[QuestionResult], as_json: bool) -> None:
    if as_json:
        print(json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False))
    else:
        texts = [format_answer(r.answer) for r in results if r.answer is not None]
        if texts:
            print("\n\n".join(texts))
    for r in results:
        if r.error is not None:
            print(f"error: {r.error}", file=sys.stderr)
    failed = sum(r.error is not None for r in results)
    if failed and len(results) > 1:
        print(f"answered {len(results) - failed} of {len(results)} questions", file=sys.stderr)


# -- commands -------------------------------------------------------------------------------
def _pipeline(args: argparse.Namespace, store: Any) -> Any:
    from expertrag.rag import RAGPipeline

    llm = make_llm(args.model, getattr(args, "server", None), dtype=getattr(args, "dtype", None),
                   backend=getattr(args, "backend", None), layout=getattr(args, "layout", None))
    expert = choose_expert(llm, args.expert)
    return RAGPipeline(llm, store, k=args.k, expert=expert, max_new_tokens=args.max_new_tokens,
                       evidence_gate="auto" if getattr(args, "evidence_gate", False) else None)


def _listing(title: str, rows: Sequence[tuple[str, str]], verbose: bool) -> None:
    if not rows:
        return
    print(f"{title}:")
    shown = rows if verbose else rows[:_LISTED]
    for name, why in shown:
        print(f"  {name}" + (f" {why}" if why else ""))
    if len(rows) > len(shown):
        print(f"  ... and {len(rows) - len(shown)} more (--verbose lists them all)")


def cmd_ingest(args: argparse.Namespace) -> int:
    store = make_store(args.db, args.collection, embedding_model=args.embedding_model)
    report = ingest_folder(
        args.folder,
        store,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
        progress=not args.quiet,
        skip_invalid=args.skip_invalid,
        source=args.source,
        prune=args.prune,
    )
    print(
        f"ingested {report.files} files as {report.chunks} chunks into {args.db} "
        f"(collection {args.collection!r}, {store.count()} chunks in total): "
        f"{len(report.added)} added, {len(report.updated)} updated, "
        f"{len(report.unchanged)} skipped (unchanged), {len(report.pruned)} pruned, "
        f"{len(report.refused)} refused; {report.written} chunks embedded, "
        f"{report.removed} removed"
    )
    verbose = args.verbose
    _listing("added", [(n, "") for n in report.added], verbose)
    _listing("updated (content changed)", [(n, "") for n in report.updated], verbose)
    _listing("pruned (gone from the folder)", [(n, "") for n in report.pruned], verbose)
    _listing("refused (not ingested)", report.refused, verbose)
    _listing("not followed", report.not_followed, verbose)
    _listing("recovered", report.recovered, verbose)
    _listing("gone from the folder but still indexed (--prune removes them)",
             [(n, "") for n in report.gone], verbose)
    return 0


def _open_for_answers(args: argparse.Namespace) -> Any:
    """The store, read-only, with the embedder it was ingested with; refuses a missing or
    empty collection before any model is loaded."""
    store = make_store(args.db, args.collection, read_only=True,
                       embedding_model=args.embedding_model)
    used = store.manifest.embedding
    if used and args.embedding_model and args.embedding_model != used:
        print(f"warning: collection {args.collection!r} was embedded with {used!r}, "
              f"--embedding-model is {args.embedding_model!r}", file=sys.stderr)
    if store.served_count() == 0:
        raise EmptyCollectionError(
            f"collection {args.collection!r} in {args.db} is empty: "
            "ingest documents first with `expertrag ingest FOLDER`"
        )
    store.embedder.embed_query("probe")  # an embedder that cannot load fails once, up front
    return store


def cmd_ask(args: argparse.Namespace) -> int:
    questions = list(args.question)
    try:
        store = _open_for_answers(args)
        pipeline = _pipeline(args, store)
    except ExpertRAGError as exc:
        if args.json:  # still one entry per question, each with the error
            _print_results([QuestionResult(n, q, error=exc)
                            for n, q in enumerate(questions, start=1)], True)
            raise _Reported() from exc
        raise
    results = answer_questions(pipeline, questions, progress=not args.quiet)
    _print_results(results, args.json)
    return 2 if any(r.error is not None for r in results) else 0


class _Reported(Exception):
    """An error already printed (as JSON entries and ``error:`` lines): exit 2 quietly."""


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
        store = make_store(str(db), args.collection, embedding_model=args.embedding_model)
        report = ingest_folder(Path(corpus), store, progress=not args.quiet,
                               source="sample_corpus")
        print(
            f"demo: ingested {report.files} sample documents as {report.chunks} chunks\n",
            file=sys.stderr if args.json else sys.stdout,  # keep --json output parseable
        )
        results = answer_questions(_pipeline(args, store), sample_questions(),
                                   progress=not args.quiet)
        _print_results(results, args.json)
        answers = [r.answer for r in results if r.answer is not None]
        right = [check_sample_answer(a.question, a.text) for a in answers]
        cited = sum(bool(ok) and any(d.metadata.get("cited") for d in a.citations)
                    for ok, a in zip(right, answers, strict=True))
        print(f"\ndemo: {sum(bool(r) for r in right)} of {len(answers)} answers are right, "
              f"{cited} of them with citations",
              file=sys.stderr if args.json else sys.stdout)
    return 2 if any(r.error is not None for r in results) else 0


# -- parser ---------------------------------------------------------------------------------
def _add_store_args(p: argparse.ArgumentParser, db_default: str | None = DEFAULT_DB_PATH) -> None:
    p.add_argument("--db", default=db_default, help="Chroma folder (default: %(default)s)")
    p.add_argument("--collection", default=DEFAULT_COLLECTION, help="collection name")
    p.add_argument("--embedding-model", default=None, metavar="MODEL",
                   help="sentence-transformers model: an alias, a local folder or a hub id "
                        "(default: the embedded all-MiniLM-L6-v2; `ask` uses the model the "
                        "collection was ingested with)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress bars (ours nor the model loaders')")


def _add_llm_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--k", type=int, default=4, help="passages to retrieve (default: 4)")
    p.add_argument("--expert", default=None, metavar="NAME|FOLDER",
                   help="LoRA expert to answer with: a shipped expert's name or an adapter "
                        "folder (what `expertrag train --output` writes)")
    p.add_argument("--model", default=DEFAULT_LLM, metavar="MODEL",
                   help="base LLM: an embedded alias (default: %(default)s), a .gguf file, "
                        "a local transformers folder or a HuggingFace id")
    p.add_argument("--backend", default=None, choices=BACKENDS,
                   help="inprocess (transformers + peft; the default), server (the vLLM "
                        "server at --server), or llamacpp (llama-server: the one at --server, "
                        "else one started here with the shipped experts; build it once with "
                        "scripts/setup_llamacpp.sh). On a CPU, llamacpp decodes fastest")
    p.add_argument("--server", default=None, metavar="URL",
                   help="answer through an OpenAI-compatible multi-LoRA server (vLLM) at URL "
                        "instead of in-process (default: $EXPERTRAG_SERVER_URL if set), or the "
                        "llama-server at URL with --backend llamacpp")
    p.add_argument("--layout", default=None, choices=["lora", "merged"],
                   help="with --backend llamacpp: lora (one server, the experts as LoRA "
                        "adapters; the default) or merged (one server per expert with the "
                        "expert merged into the weights: an expert decodes at the base's "
                        "speed)")
    p.add_argument("--dtype", default=None, choices=["auto", "float32", "bfloat16", "float16"],
                   help="weight dtype (default auto: bfloat16 on a CPU with native bf16 or a "
                        "GPU, else float32)")
    p.add_argument("--max-new-tokens", type=int, default=192, help="answer length limit")
    p.add_argument("--evidence-gate", action="store_true",
                   help="refuse without generating when no passage clears the expert's "
                        "calibrated relevance floor (grounded-qa ships one)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON list with one entry per question (its answer, or its "
                        "error)")


_EXAMPLES = {
    None: """examples:
  expertrag demo                                  # answer sample questions, offline
  expertrag ingest docs/                          # index a folder of .txt/.md files
  expertrag ask "What is the annual fee?"         # answer from the indexed folder
  expertrag <command> --help                      # options of one command""",
    "ingest": """examples:
  expertrag ingest docs/
  expertrag ingest docs/ --db ./kb --collection handbook
  expertrag ingest docs/ --skip-invalid           # leave out files that are not UTF-8
  expertrag ingest docs/ --prune                  # also drop files deleted from docs/
  expertrag ingest ~/notes --source notes         # file under a name, not the path""",
    "ask": """examples:
  expertrag ask "What is the annual fee?"
  expertrag ask "Who built it?" "When?" --k 6 --json
  expertrag ask "What is the annual fee?" --expert grounded-qa
  expertrag ask "What is the annual fee?" --expert experts/my-qa --model my-base/""",
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

    p = _sub_parser(sub, "ingest", "sync a folder of .txt/.md files into a collection: "
                    "new and changed files are embedded, unchanged ones skipped")
    p.add_argument("folder", help="folder to ingest (recursively)")
    _add_store_args(p)
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument("--chunk-overlap", type=int, default=DEFAULT_CHUNK_OVERLAP)
    p.add_argument("--source", default=None, metavar="NAME",
                   help="file the folder's documents under NAME instead of the folder's "
                        "absolute path (keeps their ids when the folder moves)")
    p.add_argument("--prune", action="store_true",
                   help="remove the chunks of files that are gone from the folder")
    p.add_argument("--skip-invalid", action="store_true",
                   help="ingest the readable files and list the ones left out (not UTF-8, "
                        "binary, empty); by default any such file refuses the whole folder")
    p.add_argument("--verbose", action="store_true",
                   help=f"list every file per outcome (default: the first {_LISTED})")
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


@contextlib.contextmanager
def quiet_loaders(quiet: bool) -> Iterator[None]:
    """With ``quiet``, silence the progress bars of transformers and huggingface_hub
    ("Loading weights", downloads) for the command's duration."""
    if not quiet:
        yield
        return
    previous = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when the libraries load
    hf_logging = None
    if "transformers" in sys.modules:  # already loaded: switch its bars off directly
        from transformers.utils import logging as hf_logging

        if not hf_logging.is_progress_bar_enabled():
            hf_logging = None  # already off: nothing to restore
        else:
            hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
        else:
            os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = previous
        # bars we switched off are switched on again; a library first loaded during the
        # command read the variable at import and keeps its bars off (turning them on
        # would only warn that the variable has priority)
        if hf_logging is not None:
            hf_logging.enable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``expertrag`` command; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        with quiet_loaders(bool(getattr(args, "quiet", False))):
            return int(args.func(args))
    except ExpertRAGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except _Reported:
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: still one line, the traceback on request
        if os.environ.get("EXPERTRAG_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (an expertrag bug: please "
              "report it; EXPERTRAG_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
