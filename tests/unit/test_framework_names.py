"""Issue 45, part 3: the names and defaults a framework user expects.

``model`` is the base model and ``expert`` the expert in both chat skins (the old forms warn
and still work); an expert with a prompt format gets the frameworks' RAG prompts in it; the
``langchain`` extra does not pull langchain-community.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from tiny_models import save_tiny_lora, tiny_llm

from expertrag.compat import ExpertRAGDeprecationWarning
from expertrag.langchain import ChatExpertLLM
from expertrag.llama_index import ExpertLlamaLLM
from expertrag.prompt_format import format_of, parse_rag_prompt, reformat, split_passages
from expertrag.rag import INSTRUCTIONS, build_messages
from expertrag.types import Document

ROOT = Path(__file__).resolve().parents[2]
PASSAGES = ["The lighthouse was built in 1862 from granite.",
            "Membership costs 45 euros per year for adults."]
QUESTION = "When was the lighthouse built?"


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A tiny model with a random adapter attached under the name ``grounded-qa``."""
    llm = tiny_llm(name="tiny-names")
    path = save_tiny_lora(llm, str(tmp_path_factory.mktemp("lora") / "gqa"))
    llm.add_expert("grounded-qa", path)
    llm.add_expert("plain", save_tiny_lora(llm, str(tmp_path_factory.mktemp("lora") / "p")))
    return llm


def spy(monkeypatch: pytest.MonkeyPatch, core: Any, name: str) -> list[Any]:
    calls: list[Any] = []
    original = getattr(core, name)

    def wrapped(messages: Any, **kwargs: Any) -> Any:
        calls.append(messages)
        return original(messages, **kwargs)

    monkeypatch.setattr(core, name, wrapped)
    return calls


# ---------------------------------------------------------------------- names
def test_langchain_model_is_the_base_and_expert_the_expert() -> None:
    chat = ChatExpertLLM(model="some/base", expert="e1")
    assert (chat.model, chat.expert, chat.base_model) == ("some/base", "e1", "some/base")
    assert chat._get_ls_params()["ls_model_name"] == "some/base:e1"
    assert ChatExpertLLM().model == "smollm2-135m-instruct"
    assert ChatExpertLLM(model="my-folder").expert is None


@pytest.mark.parametrize(("kwargs", "model", "expert"), [
    ({"base_model": "b"}, "b", None),
    ({"base_model": "b", "model": "e1"}, "b", "e1"),
    ({"model": "e1", "experts": {"e1": "path"}}, "smollm2-135m-instruct", "e1"),
    ({"model": "grounded-qa"}, "smollm2-135m-instruct", "grounded-qa"),
    ({"model": None}, "smollm2-135m-instruct", None),
])
def test_langchain_old_forms_warn_and_still_work(kwargs: dict, model: str,
                                                  expert: str | None) -> None:
    with pytest.warns(ExpertRAGDeprecationWarning):
        chat = ChatExpertLLM(**kwargs)
    assert (chat.model, chat.expert) == (model, expert)


def test_new_forms_do_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    ChatExpertLLM(model="b", expert="grounded-qa")
    ChatExpertLLM(model="b", expert="e1", experts={"e1": "path"})
    ExpertLlamaLLM.model_fields  # noqa: B018 - class only, nothing loads
    assert not [w for w in recwarn if issubclass(w.category, ExpertRAGDeprecationWarning)]


def test_from_core_old_form(core: Any) -> None:
    with pytest.warns(ExpertRAGDeprecationWarning, match="expert='plain'"):
        chat = ChatExpertLLM.from_core(core, model="plain", max_tokens=2)
    assert (chat.model, chat.expert) == ("tiny-names", "plain")
    assert chat.invoke("hi").response_metadata["model_name"] == "tiny-names:plain"
    new = ChatExpertLLM.from_core(core, expert="plain", max_tokens=2)
    assert new.invoke("hi", model="tiny-names").response_metadata["model_name"] == "tiny-names"
    assert new.invoke("hi", model="tiny-names:plain").response_metadata["expert"] == "plain"


def test_llama_index_model_is_the_base(core: Any) -> None:
    llm = ExpertLlamaLLM.from_core(core, expert="plain", max_new_tokens=2)
    assert (llm.model, llm.expert, llm.base_model) == ("tiny-names", "plain", "tiny-names")
    with pytest.warns(ExpertRAGDeprecationWarning, match="base_model"):
        old = ExpertLlamaLLM(core=core, base_model="tiny-names")
    assert old.model == "tiny-names"


# ---------------------------------------------------------------------- prompt format
def _llama_index_prompt() -> list[dict[str, str]]:
    from llama_index.core.prompts.chat_prompts import CHAT_TEXT_QA_PROMPT

    context = "\n\n".join(["file_path: a.txt\npage_label: 1", PASSAGES[0],
                           "file_path: b.txt", PASSAGES[1]])
    msgs = CHAT_TEXT_QA_PROMPT.format_messages(context_str=context, query_str=QUESTION)
    return [{"role": m.role.value, "content": m.content} for m in msgs]


RLM_RAG_PROMPT = (
    "You are an assistant for question-answering tasks. Use the following pieces of retrieved "
    "context to answer the question. If you don't know the answer, just say that you don't "
    "know. Use three sentences maximum and keep the answer concise.\n"
    "Question: {question} \nContext: {context} \nAnswer:"
)


@pytest.mark.parametrize("messages", [
    _llama_index_prompt(),
    [{"role": "user", "content": RLM_RAG_PROMPT.format(
        question=QUESTION, context="\n\n".join(PASSAGES))}],
    [{"role": "system", "content": "Answer briefly using only the passage."},
     {"role": "user", "content": f"Passages: [1] {PASSAGES[0]}\n\n[2] {PASSAGES[1]}\n\n"
                                 f"Question: {QUESTION}"}],
    [{"role": "user", "content": f"Context:\n{PASSAGES[0]}\n\n{PASSAGES[1]}\n\n"
                                 f"Question: {QUESTION}\nAnswer:"}],
])
def test_rag_prompts_are_recognised(messages: list[dict[str, str]]) -> None:
    assert parse_rag_prompt(messages) == (QUESTION, PASSAGES)
    out = reformat(messages, "grounded")
    assert out == build_messages(QUESTION, [Document(p) for p in PASSAGES])
    assert INSTRUCTIONS in out[0]["content"]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": "Context: x\n\nQuestion: y"},
     {"role": "assistant", "content": "z"}, {"role": "user", "content": "and?"}],
    build_messages(QUESTION, [Document(p) for p in PASSAGES]),
])
def test_other_prompts_are_left_alone(messages: list[dict[str, str]]) -> None:
    assert reformat(messages, "grounded") is messages
    assert reformat(_llama_index_prompt(), None) == _llama_index_prompt()


def test_split_passages() -> None:
    assert split_passages("[1] a\n\n[2] b\n \nc") == ["a", "b", "c"]
    assert split_passages("file_path: x.txt\n\nbody\n\nnote: last") == ["body", "note: last"]


def test_format_of(core: Any) -> None:
    assert format_of(core, "grounded-qa") == "grounded"
    assert format_of(core, "plain") is None
    assert format_of(core, None) is None
    assert format_of(core, "not-attached") is None


def test_langchain_applies_the_expert_format(core: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_core.messages import HumanMessage

    calls = spy(monkeypatch, core, "generate")
    prompt = [HumanMessage(RLM_RAG_PROMPT.format(question=QUESTION,
                                                 context="\n\n".join(PASSAGES)))]
    expected = build_messages(QUESTION, [Document(p) for p in PASSAGES])
    chat = ChatExpertLLM.from_core(core, expert="grounded-qa", max_tokens=2)
    chat.invoke(prompt)
    assert calls[-1] == expected
    chat.invoke(prompt, expert_prompt=False)
    assert calls[-1][0]["content"] == prompt[0].content
    ChatExpertLLM.from_core(core, expert="plain", max_tokens=2).invoke(prompt)
    assert calls[-1][0]["content"] == prompt[0].content  # no format: unchanged
    ChatExpertLLM.from_core(core, expert="grounded-qa", expert_prompt=False,
                            max_tokens=2).invoke(prompt)
    assert calls[-1][0]["content"] == prompt[0].content
    calls.clear()
    chat.batch([prompt, prompt])  # one batched call, every row in the expert's format
    assert len(calls) == 1 and calls[0] == [expected, expected]
    list(chat.stream(prompt))


async def test_langchain_async_applies_the_expert_format(
        core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = spy(monkeypatch, core, "agenerate")
    chat = ChatExpertLLM.from_core(core, expert="grounded-qa", max_tokens=2)
    await chat.ainvoke(RLM_RAG_PROMPT.format(question=QUESTION, context="\n\n".join(PASSAGES)))
    assert INSTRUCTIONS in calls[-1][0]["content"]


def test_llama_index_query_engine_gets_the_expert_format(
        core: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index.core import get_response_synthesizer
    from llama_index.core.schema import NodeWithScore, TextNode

    calls = spy(monkeypatch, core, "generate")
    nodes = [NodeWithScore(node=TextNode(text=p, metadata={"file_path": f"{i}.txt"}), score=1.0)
             for i, p in enumerate(PASSAGES)]
    llm = ExpertLlamaLLM.from_core(core, expert="grounded-qa", max_new_tokens=2)
    get_response_synthesizer(llm=llm).synthesize(QUESTION, nodes=nodes)
    assert calls[-1] == build_messages(QUESTION, [Document(p) for p in PASSAGES])
    off = ExpertLlamaLLM.from_core(core, expert="grounded-qa", expert_prompt=False,
                                   max_new_tokens=2)
    get_response_synthesizer(llm=off).synthesize(QUESTION, nodes=nodes)
    assert calls[-1][-1]["content"].startswith("Context information is below.")
    llm.complete("Context: a\n\nQuestion: b", expert_prompt=False)
    assert calls[-1][-1]["content"] == "Context: a\n\nQuestion: b"


# ---------------------------------------------------------------------- no langchain-community
def _closure(names: list[str]) -> set[str]:
    """Installed distributions pulled in by ``names`` (their unconditional requirements,
    environment markers evaluated, extras not followed), by normalised name."""
    from packaging.requirements import Requirement

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    seen: set[str] = set()
    todo = [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(norm(req.name))
    return seen


def test_langchain_extra_does_not_pull_langchain_community() -> None:
    from packaging.requirements import Requirement

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extra = [Requirement(r).name for r in project["optional-dependencies"]["langchain"]]
    assert "langchain-community" not in extra
    pulled = _closure(extra)
    assert "langchain-core" in pulled
    assert "langchain-community" not in pulled, sorted(pulled)


def test_skins_import_without_langchain_community() -> None:
    code = (
        "import sys, importlib\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'langchain_community':\n"
        "            raise ImportError('langchain_community blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import langchain_expertrag, expertrag.langchain\n"
        "for m in ('chains', 'chat_models', 'embeddings', 'evaluators', 'graph', 'rerankers',"
        " 'retrievers', 'vectorstores', 'decisions'):\n"
        "    importlib.import_module('expertrag.langchain.' + m)\n"
        "assert not [m for m in sys.modules if m.startswith('langchain_community')]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
