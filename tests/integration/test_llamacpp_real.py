"""LlamaCppLLM against a real llama-server (built once by scripts/setup_llamacpp.sh, started
here on a free port of 127.0.0.1) serving the embedded GGUF with the shipped experts
converted to GGUF LoRA: the LLM contract, agreement with in-process decoding, mixed experts
in concurrent requests, constrained output, label probabilities, the refusal gate, attaching
an expert, failure modes, the CLI, and the LangChain standard chat-model suite on it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
pytest.importorskip("httpx")

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
           [{"role": "user", "content": "Name a colour of the sky."}],
           [{"role": "user", "content": "Count from 1 to 5."}]]
CONTEXT = ("Answer the question from the documents.\n\n[1] The Eiffel Tower is a wrought-iron "
           "lattice tower in Paris, designed by the company of Gustave Eiffel.\n\n"
           "Question: Whose company designed the Eiffel Tower?")


@pytest.fixture(scope="module")
def built() -> None:
    from expertrag.models.llamacpp import LlamaCppSetupError, find_llama_server

    try:
        find_llama_server()
    except LlamaCppSetupError:
        subprocess.run(["bash", str(ROOT / "scripts" / "setup_llamacpp.sh")], check=True,
                       timeout=3000)


@pytest.fixture(scope="module")
def server(built: None) -> Any:
    from expertrag.models.llamacpp import LlamaCppLLM

    llm = LlamaCppLLM.start(parallel=4, ctx_per_slot=2048)
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def local() -> Any:
    from expertrag.experts import attach_shipped
    from expertrag.models import ExpertLLM

    llm = ExpertLLM.shared()
    attach_shipped(llm)
    return llm


def test_the_server_serves_the_shipped_experts(server: Any) -> None:
    from expertrag.experts import shipped_experts
    from expertrag.models.interface import ExpertModel

    assert isinstance(server, ExpertModel)
    assert server.experts == sorted(shipped_experts())
    assert server.context_window == 2048
    info = server.expert_info("grounded-qa")
    assert info["path"] == str(shipped_experts()["grounded-qa"]) and info["gate"]


def test_greedy_answers_agree_with_in_process(server: Any, local: Any) -> None:
    """Same token ids, greedy. llama.cpp multiplies the Q4_1 weights with 8-bit activations
    where in-process multiplies their de-quantized fp32 copy, so a near tie may break the
    other way: the first words agree, and most answers agree whole."""
    same = 0
    for expert in (None, "grounded-qa"):
        mine = local.generate(PROMPTS, expert=expert, max_new_tokens=16, refusal_gate=False)
        theirs = server.generate(PROMPTS, expert=expert, max_new_tokens=16,
                                 refusal_gate=False)
        for a, b in zip(mine, theirs, strict=True):
            same += a.text == b.text
            assert a.text[:4] == b.text[:4], (a.text, b.text)
    assert same >= 3


def test_the_experts_beams_run_over_llama_cpp_as_in_process(server: Any, local: Any) -> None:
    """grounded-qa's card asks for 3 beams: both backends search them (llama.cpp through
    one-token requests with the top log-probabilities) and land on the same answer."""
    conv = [{"role": "user", "content": CONTEXT}]
    mine = local.generate(conv, expert="grounded-qa", max_new_tokens=24, refusal_gate=False)
    theirs = server.generate(conv, expert="grounded-qa", max_new_tokens=24, refusal_gate=False)
    assert theirs.text == mine.text and "Eiffel" in theirs.text
    wide = server.generate(PROMPTS[0], num_beams=4, max_new_tokens=8)
    assert wide.text and wide.completion_tokens <= 8


def test_the_expert_changes_the_answer(server: Any) -> None:
    conv = [{"role": "user", "content": CONTEXT}]
    expert = server.generate(conv, expert="grounded-qa", max_new_tokens=24, refusal_gate=False)
    base = server.generate(conv, max_new_tokens=24)
    assert "Eiffel" in expert.text and expert.text != base.text


def _check_no_mix_up(llm: Any) -> None:
    """Eight concurrent requests over three experts and the base: each answer follows its
    own expert's answer to the same prompt alone at least as far as any other expert's.
    (Not equality: llama.cpp's matmuls round differently in a batch than alone on some
    CPUs, e.g. AVX512 hosts, which can flip a near tie a few tokens in; an adapter mix-up
    changes the answer from its first words.)"""
    experts = ["grounded-qa", None, "critic", "relevance"] * 2
    convs = [PROMPTS[i % 3] for i in range(len(experts))]
    together = llm.generate(convs, expert=experts, max_new_tokens=8, refusal_gate=False)
    alone = {(i, e): llm.generate(PROMPTS[i], expert=e, max_new_tokens=8,
                                  refusal_gate=False).text
             for i in range(3) for e in set(experts)}

    def shared(a: str, b: str) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    for i, (expert, res) in enumerate(zip(experts, together, strict=True)):
        own = shared(res.text, alone[(i % 3, expert)])
        assert res.expert == expert and own >= min(4, len(res.text)), (expert, res.text)
        for other in set(experts) - {expert}:
            assert own >= shared(res.text, alone[(i % 3, other)]), (expert, other, res.text)


def test_mixed_experts_in_concurrent_requests_do_not_mix_up(server: Any) -> None:
    _check_no_mix_up(server)


def test_streaming_matches_generate(server: Any) -> None:
    chunks = list(server.stream(PROMPTS[2], max_new_tokens=16))
    whole = server.generate(PROMPTS[2], max_new_tokens=16)
    assert len(chunks) > 3 and "".join(c.text for c in chunks) == whole.text
    assert chunks[-1].final.completion_tokens == whole.completion_tokens


def test_structured_output_and_tool_calls_parse(server: Any) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"]}
    res = server.generate(PROMPTS[0], json_schema=schema, max_new_tokens=40)
    assert set(res.parsed) == {"city", "population"}
    cut = server.generate(PROMPTS[0], json_schema=schema, max_new_tokens=6)
    assert cut.finish_reason == "length" and set(cut.parsed) == {"city", "population"}
    tool = {"type": "function", "function": {
        "name": "weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                       "required": ["city"]}}}
    called = server.generate([{"role": "user", "content": "What is the weather in Paris?"}],
                             tools=[tool], tool_choice="any", max_new_tokens=40)
    assert called.tool_calls and called.tool_calls[0].name == "weather"
    assert isinstance(called.tool_calls[0].arguments["city"], str)


@pytest.mark.parametrize("layout", ["server", "merged"])
def test_label_probabilities_agree_with_in_process(layout: str, local: Any,
                                                    request: pytest.FixtureRequest) -> None:
    """Both layouts: the lora server and the merged one."""
    from expertrag.rerank.llm import RELEVANCE_PROMPT

    server = request.getfixturevalue(layout)

    convs = [[{"role": "user", "content": RELEVANCE_PROMPT.format(
        passage=p, query="What is the capital of France?")}] for p in (
        "Paris is the capital of France.", "Bread is made from flour.")]
    mine = local.label_probabilities(convs, expert="relevance")
    theirs = server.label_probabilities(convs, expert="relevance")
    for a, b in zip(mine, theirs, strict=True):
        assert a["yes"] == pytest.approx(b["yes"], abs=0.05)
    assert theirs[0]["yes"] > theirs[1]["yes"]


def test_refusal_gate_over_llama_cpp(server: Any) -> None:
    from expertrag.rag import REFUSAL

    conv = [{"role": "user", "content": CONTEXT}]
    refused = server.generate(conv, expert="grounded-qa", refusal_threshold=0.0)
    assert refused.text == REFUSAL and refused.refusal_probability is not None
    answered = server.generate(conv, expert="grounded-qa", refusal_threshold=1.0,
                               max_new_tokens=16)
    assert answered.refusal_probability < 1.0 and not answered.text.startswith(REFUSAL[:12])


def test_failure_modes(server: Any) -> None:
    from expertrag.errors import UnknownExpertError
    from expertrag.models.llamacpp import LlamaCppLLM, _free_port
    from expertrag.models.server import ServerCapabilityError, ServerError, ServerTimeoutError

    with pytest.raises(UnknownExpertError):
        server.generate(PROMPTS[0], expert="no-such-expert")
    down = LlamaCppLLM(f"http://127.0.0.1:{_free_port()}", tokenizer=server.tokenizer,
                       timeout=2)
    with pytest.raises(ServerError, match="cannot reach"):
        down.generate(PROMPTS[0])
    slow = LlamaCppLLM(server.base_url, tokenizer=server.tokenizer, timeout=0.001)
    with pytest.raises(ServerTimeoutError):
        slow.generate(PROMPTS[2], max_new_tokens=64)
    other = LlamaCppLLM(server.base_url, tokenizer=server.tokenizer)
    with pytest.raises(ServerCapabilityError, match="at start only"):
        other.add_expert("mine", ROOT)


def test_attaching_an_expert_restarts_the_owned_server(built: None, tmp_path: Path) -> None:
    import shutil

    from expertrag.experts import shipped_experts
    from expertrag.models.llamacpp import LlamaCppLLM

    folder = tmp_path / "my-qa"
    shutil.copytree(shipped_experts()["grounded-qa"], folder)
    with LlamaCppLLM.start(experts=["critic"], parallel=1) as llm:
        assert llm.experts == ["critic"]
        llm.add_expert("my-qa", folder)
        assert llm.experts == ["critic", "my-qa"]
        res = llm.generate([{"role": "user", "content": CONTEXT}], expert="my-qa",
                           max_new_tokens=16, refusal_gate=False)
        assert "Eiffel" in res.text


def test_the_llama_index_llm_takes_it(server: Any) -> None:
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import ChatMessage

    from expertrag.llama_index.llms import ExpertLlamaLLM

    llm = ExpertLlamaLLM.from_core(server, expert="grounded-qa", max_new_tokens=24)
    assert "Eiffel" in llm.complete(CONTEXT).text
    reply = llm.chat([ChatMessage(role="user", content=CONTEXT)])
    assert "Eiffel" in reply.message.content
    streamed = "".join(c.delta for c in llm.stream_complete(PROMPTS[2][0]["content"]))
    assert streamed


def test_the_cli_answers_with_the_llamacpp_backend(built: None, tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "expertrag.cli", "demo", "--backend",
                          "llamacpp", "--json", "--quiet"], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=900, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    answers = json.loads(out.stdout)
    assert len(answers) == 5 and all(a.get("answer") for a in answers)
    assert "5 of 5 answers are right" in out.stderr


# ---------------------------------------------------------------------------- merged layout
@pytest.fixture(scope="module")
def merged(built: None) -> Any:
    from expertrag.models.llamacpp import LlamaCppLLM

    llm = LlamaCppLLM.start(experts=["grounded-qa", "critic", "relevance"], parallel=4,
                            ctx_per_slot=2048, layout="merged")
    yield llm
    llm.close()


def test_merged_experts_are_served_by_their_own_q8_0_servers(merged: Any) -> None:
    assert merged.layout == "merged"
    assert merged.experts == ["critic", "grounded-qa", "relevance"]
    urls = {merged.expert_info(n)["served_by"] for n in merged.experts} | {merged.base_url}
    assert len(urls) == 4
    assert all(Path(s.model_path).name.endswith(".q8_0.gguf")
               for s in merged._route_servers.values())


def test_merged_answers_agree_with_in_process(merged: Any, local: Any) -> None:
    """The expert merged into Q8_0 weights answers as in-process (fp32, unmerged LoRA):
    the first words agree, most answers agree whole, and the beams land on the same
    answer."""
    mine = local.generate(PROMPTS, expert="grounded-qa", max_new_tokens=16,
                          refusal_gate=False, num_beams=1)
    theirs = merged.generate(PROMPTS, expert="grounded-qa", max_new_tokens=16,
                             refusal_gate=False, num_beams=1)
    assert all(a.text[:4] == b.text[:4] for a, b in zip(mine, theirs, strict=True))
    assert sum(a.text == b.text for a, b in zip(mine, theirs, strict=True)) >= 2
    conv = [{"role": "user", "content": CONTEXT}]
    assert merged.generate(conv, expert="grounded-qa", max_new_tokens=24,
                           refusal_gate=False).text == local.generate(
        conv, expert="grounded-qa", max_new_tokens=24, refusal_gate=False).text


def test_merged_mixed_experts_in_concurrent_requests_do_not_mix_up(merged: Any) -> None:
    _check_no_mix_up(merged)
    chunks = list(merged.stream(PROMPTS[2], expert="critic", max_new_tokens=12))
    assert "".join(c.text for c in chunks) == merged.generate(
        PROMPTS[2], expert="critic", max_new_tokens=12).text


def test_attaching_an_expert_to_the_merged_layout_starts_one_more_server(built: None,
                                                                        tmp_path: Path) -> None:
    import shutil

    from expertrag.experts import shipped_experts
    from expertrag.models.llamacpp import LlamaCppLLM

    folder = tmp_path / "my-qa"
    shutil.copytree(shipped_experts()["grounded-qa"], folder)
    with LlamaCppLLM.start(experts=["critic"], parallel=1, ctx_per_slot=2048,
                           layout="merged") as llm:
        base_pid = llm.server.process.pid
        llm.add_expert("my-qa", folder)
        assert llm.experts == ["critic", "my-qa"] and llm.server.process.pid == base_pid
        res = llm.generate([{"role": "user", "content": CONTEXT}], expert="my-qa",
                           max_new_tokens=16, refusal_gate=False)
        assert "Eiffel" in res.text
        servers = list(llm._route_servers.values())
    assert all(s.process is None for s in servers)  # closing stopped every server


pytest.importorskip("langchain_tests")

from langchain_capabilities import ServedChatSuite  # noqa: E402
from langchain_tests.integration_tests import ChatModelIntegrationTests  # noqa: E402


class TestChatExpertLLMOnLlamaCpp(ServedChatSuite, ChatModelIntegrationTests):
    """The standard chat-model suite with this module's server as the client."""
