"""The integration import paths each framework teaches re-export the skins' objects.

LangChain users import from the partner-style ``langchain_expertrag``; LlamaIndex users from
the integration namespaces (``llama_index.llms.expertrag``, ...). Both are thin re-exports of
``expertrag.langchain`` / ``expertrag.llama_index``: every name must be the very same object
in the old and the new place, and every public class a skin module defines must be reachable
from the new paths.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

# (skin module, name, new module)
LANGCHAIN = [
    ("expertrag.langchain.chat_models", "ChatExpertLLM", "langchain_expertrag"),
    ("expertrag.langchain.embeddings", "ExpertEmbeddings", "langchain_expertrag"),
    ("expertrag.langchain.rerankers", "ExpertReranker", "langchain_expertrag"),
    ("expertrag.langchain.retrievers", "ExpertHybridRetriever", "langchain_expertrag"),
    ("expertrag.langchain.vectorstores", "ExpertChromaRetriever", "langchain_expertrag"),
    ("expertrag.langchain.vectorstores", "chroma_vectorstore", "langchain_expertrag"),
    ("expertrag.langchain.graph", "ExpertGraphRetriever", "langchain_expertrag"),
    ("expertrag.langchain.chains", "CorrectiveRAGChain", "langchain_expertrag"),
    ("expertrag.langchain.chains", "SelfRAGChain", "langchain_expertrag"),
    ("expertrag.langchain.chains", "CorrectedContextRetriever", "langchain_expertrag"),
    ("expertrag.langchain.chains", "lc_source", "langchain_expertrag"),
    ("expertrag.langchain.chains", "MultiHopRAGChain", "langchain_expertrag"),
    ("expertrag.langchain.chains", "MultiHopRetriever", "langchain_expertrag"),
    ("expertrag.langchain.decisions", "ExpertDecisionModel", "langchain_expertrag"),
    ("expertrag.langchain.decisions", "relevance_questions", "langchain_expertrag"),
    ("expertrag.langchain.decisions", "critic_questions", "langchain_expertrag"),
    ("expertrag.langchain.decisions", "DecisionEvaluator", "langchain_expertrag"),
    ("expertrag.langchain.decisions", "DecisionCritic", "langchain_expertrag"),
    ("expertrag.langchain.evaluators", "ExpertEvaluator", "langchain_expertrag"),
    ("expertrag.langchain.evaluators", "faithfulness_evaluator", "langchain_expertrag"),
    ("expertrag.langchain.evaluators", "context_relevance_evaluator", "langchain_expertrag"),
    ("expertrag.langchain.evaluators", "answer_relevance_evaluator", "langchain_expertrag"),
    ("expertrag.langchain.evaluators", "correctness_evaluator", "langchain_expertrag"),
]

LLAMA_INDEX = [
    ("expertrag.llama_index.llms", "ExpertLlamaLLM", "llama_index.llms.expertrag"),
    ("expertrag.llama_index.embeddings", "ExpertEmbedding", "llama_index.embeddings.expertrag"),
    ("expertrag.llama_index.postprocessors", "ExpertRerank",
     "llama_index.postprocessor.expertrag_rerank"),
    ("expertrag.llama_index.retrievers", "ExpertHybridRetriever",
     "llama_index.retrievers.expertrag"),
    ("expertrag.llama_index.vector_store", "ExpertRetriever", "llama_index.retrievers.expertrag"),
    ("expertrag.llama_index.graph", "ExpertGraphRetriever", "llama_index.retrievers.expertrag"),
    ("expertrag.llama_index.chains", "CorrectedContextRetriever",
     "llama_index.retrievers.expertrag"),
    ("expertrag.llama_index.vector_store", "ExpertRetriever",
     "llama_index.vector_stores.expertrag"),
    ("expertrag.llama_index.vector_store", "chroma_vector_store",
     "llama_index.vector_stores.expertrag"),
    ("expertrag.llama_index.evaluators", "ExpertFaithfulnessEvaluator",
     "llama_index.evaluation.expertrag"),
    ("expertrag.llama_index.evaluators", "ExpertContextRelevancyEvaluator",
     "llama_index.evaluation.expertrag"),
    ("expertrag.llama_index.evaluators", "ExpertAnswerRelevancyEvaluator",
     "llama_index.evaluation.expertrag"),
    ("expertrag.llama_index.evaluators", "ExpertCorrectnessEvaluator",
     "llama_index.evaluation.expertrag"),
    ("expertrag.llama_index.chains", "CorrectiveRAGQueryEngine",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.chains", "SelfRAGQueryEngine", "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.chains", "MultiHopQueryEngine",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.chains", "MultiHopRetriever", "llama_index.retrievers.expertrag"),
    ("expertrag.llama_index.chains", "ChainStageEvent", "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.chains", "CRAGActionEvent", "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "CorrectiveRAGWorkflow",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "SelfRAGWorkflow",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "AnswerDeltaEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "CRAGRetrievedEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "CRAGGradedEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "CRAGRefinedEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "CRAGExternalEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "CRAGContextEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "SelfRAGDecisionEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "SelfRAGRetrievedEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.workflows", "SelfRAGCandidatesEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.chains", "SelfRAGRetrieveEvent",
     "llama_index.query_engine.expertrag"),
    ("expertrag.llama_index.chains", "llama_source", "llama_index.query_engine.expertrag"),
]

NEW_LLAMA_MODULES = sorted({new for _, _, new in LLAMA_INDEX})


def _same(old_module: str, name: str, new_module: str) -> None:
    old = getattr(importlib.import_module(old_module), name)
    new_mod = importlib.import_module(new_module)
    assert getattr(new_mod, name) is old, f"{new_module}.{name} is not {old_module}.{name}"
    assert name in new_mod.__all__
    # one implementation: the object is defined in the skin, not in the re-exporting module
    assert old.__module__ == old_module


@pytest.mark.parametrize(("old_module", "name", "new_module"), LANGCHAIN,
                         ids=[n for _, n, _ in LANGCHAIN])
def test_langchain_partner_path_is_the_skin(old_module: str, name: str,
                                            new_module: str) -> None:
    pytest.importorskip("langchain_core")
    _same(old_module, name, new_module)


@pytest.mark.parametrize(("old_module", "name", "new_module"), LLAMA_INDEX,
                         ids=[f"{n}@{new.split('.')[1]}" for _, n, new in LLAMA_INDEX])
def test_llama_index_namespace_is_the_skin(old_module: str, name: str,
                                           new_module: str) -> None:
    pytest.importorskip("llama_index.core")
    _same(old_module, name, new_module)


def test_old_package_exports_still_work() -> None:
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    import expertrag.langchain as lc
    import expertrag.llama_index as li
    import langchain_expertrag

    for name in lc.__all__:
        assert getattr(langchain_expertrag, name) is getattr(lc, name)
    for name in li.__all__:
        assert any(getattr(importlib.import_module(m), name, None) is getattr(li, name)
                   for m in NEW_LLAMA_MODULES), name


def _public_classes(package: str) -> list[tuple[str, str]]:
    pkg = importlib.import_module(package)
    out = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and obj.__module__ == module.__name__
                    and not name.startswith("_")):
                out.append((module.__name__, name))
    return out


def test_every_langchain_skin_class_has_a_partner_path() -> None:
    pytest.importorskip("langchain_core")
    covered = {(old, name) for old, name, _ in LANGCHAIN}
    missing = [c for c in _public_classes("expertrag.langchain") if c not in covered]
    assert not missing, f"not exposed in langchain_expertrag: {missing}"
    import langchain_expertrag

    assert set(langchain_expertrag.__all__) == {n for _, n, _ in LANGCHAIN} | {"__version__"}


def test_every_llama_index_skin_class_has_a_namespace_path() -> None:
    pytest.importorskip("llama_index.core")
    covered = {(old, name) for old, name, _ in LLAMA_INDEX}
    missing = [c for c in _public_classes("expertrag.llama_index") if c not in covered]
    assert not missing, f"not exposed in a llama_index.<kind>.expertrag module: {missing}"


def test_llama_index_namespace_merges_with_core() -> None:
    """No __init__.py at llama_index/ or llama_index/<kind>/ (PEP 420), so ours merge with
    llama-index-core's instead of shadowing it."""
    assert not (SRC / "llama_index" / "__init__.py").exists()
    kinds = [p for p in (SRC / "llama_index").iterdir() if p.is_dir() and p.name != "__pycache__"]
    assert kinds
    for kind in kinds:
        assert not (kind / "__init__.py").exists(), kind
    pytest.importorskip("llama_index.core")
    import llama_index.core

    assert getattr(llama_index, "__file__", None) is None  # a namespace package
    assert len(list(llama_index.__path__)) >= 2  # core's portion and ours


def test_new_paths_import_light() -> None:
    """Importing the integration modules loads no model and no torch."""
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    code = (
        "import sys, importlib\n"
        f"for m in {['langchain_expertrag', *NEW_LLAMA_MODULES]!r}:\n"
        "    importlib.import_module(m)\n"
        "heavy = [m for m in ('torch', 'transformers', 'sentence_transformers', 'spacy')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
