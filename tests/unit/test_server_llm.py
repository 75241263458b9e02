"""ServerLLM against a fake OpenAI-compatible server on loopback: the requests it sends
(prompts rendered here, model names, grammars, label log-probabilities, the refusal gate)
and how it reads the answers; every failure mode is a typed error."""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from tiny_models import tiny_tokenizer

from expertrag.errors import InputError, UnknownExpertError
from expertrag.models.server import (
    ServerCapabilityError,
    ServerError,
    ServerLLM,
    ServerTimeoutError,
)

pytest.importorskip("httpx")


class Fake(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    script: ClassVar[dict[str, Any]] = {}
    models: ClassVar[list[dict[str, Any]]] = [
        {"id": "base", "parent": None, "max_model_len": 2048},
        {"id": "grounded-qa", "parent": "base"}, {"id": "critic", "parent": "base"}]

    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._send(200, {"data": self.models})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Fake.requests.append({"path": self.path, **body})
        if self.path == "/v1/load_lora_adapter":
            Fake.models.append({"id": body["lora_name"], "parent": "base"})
            return self._send(200, {"ok": True})
        if body.get("model") not in [m["id"] for m in self.models]:
            return self._send(404, {"error": "no such model"})
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ("Paris", " [1]", "."):
                self.wfile.write(f"data: {json.dumps({'choices': [{'text': piece}]})}\n\n"
                                 .encode())
            usage = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3}}
            self.wfile.write(f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode())
            return None
        if body.get("max_tokens") == 1 and body.get("logprob_token_ids"):
            if Fake.script.get("no_logprobs"):
                return self._send(200, {"choices": [{"text": "x", "logprobs": None}]})
            probs = Fake.script.get("probs", {})
            top = {f"token_id:{t}": math.log(probs.get(t, 1e-6))
                   for t in body["logprob_token_ids"]}
            return self._send(200, {"choices": [{"text": "x", "logprobs": {
                "top_logprobs": [top]}}]})
        text = Fake.script.get("text", "Paris [1].")
        if "structured_outputs" in body and "tool_call" in body["structured_outputs"]["grammar"]:
            text = Fake.script.get("tool_text", '<tool_call>[{"name": "search", "arguments": '
                                                '{"q": "paris"}}]</tool_call>')
        finish = Fake.script.get("finish", "stop")
        return self._send(200, {"choices": [{"text": text, "finish_reason": finish,
                                             "logprobs": {"token_logprobs": [-0.1, -0.2]}}],
                                "usage": {"prompt_tokens": 7, "completion_tokens": 2}})


@pytest.fixture
def server():
    Fake.requests.clear()
    Fake.script.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    llm = ServerLLM(f"http://127.0.0.1:{httpd.server_address[1]}/v1",
                    tokenizer=tiny_tokenizer(), concurrency=4)
    yield llm
    llm.close()
    httpd.shutdown()
    Fake.models[:] = Fake.models[:3]


HELLO = [{"role": "user", "content": "Where is the Eiffel tower?"}]


def test_models_experts_and_prompts_rendered_here(server):
    assert server.model_name == "base" and server.experts == ["critic", "grounded-qa"]
    assert server.context_window == 2048
    res = server.generate(HELLO, expert="grounded-qa", max_new_tokens=8, stop=["\n"])
    assert res.text == "Paris [1]." and res.prompt_tokens == 7 and res.completion_tokens == 2
    sent = Fake.requests[-1]
    assert sent["model"] == "grounded-qa" and sent["prompt"] == server.render(HELLO)
    assert sent["max_tokens"] == 8 and sent["stop"] == ["\n"] and sent["temperature"] == 0.0


def test_a_batch_is_concurrent_requests_with_mixed_experts(server):
    # refusal_gate=False: the shipped grounded-qa's gate would add a log-probability request
    out = server.generate([HELLO, HELLO, HELLO], expert=["grounded-qa", None, "critic"],
                          refusal_gate=False)
    assert [r.expert for r in out] == ["grounded-qa", None, "critic"]
    assert sorted(r["model"] for r in Fake.requests) == ["base", "critic", "grounded-qa"]


def test_the_tokenizer_loads_once_when_a_concurrent_batch_first_asks(monkeypatch):
    """A batch's first requests all ask for the lazily loaded tokenizer at once; a
    concurrent ``transformers`` import failed with ImportError before the load was locked."""
    import time

    from expertrag.models import loading

    calls: list[str] = []

    def slow_load(name: str) -> Any:
        calls.append(name)
        time.sleep(0.05)
        return tiny_tokenizer()

    monkeypatch.setattr(loading, "load_tokenizer", slow_load)
    llm = ServerLLM("http://127.0.0.1:9/v1", tokenizer="my-tokenizer")
    seen: list[Any] = []
    threads = [threading.Thread(target=lambda: seen.append(llm.grammars)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["my-tokenizer"] and len({id(g) for g in seen}) == 1


def test_structured_output_sends_the_grammar_and_parses(server):
    Fake.script["text"] = '{"answer": "Paris"}'
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"]}
    res = server.generate(HELLO, json_schema=schema)
    assert res.parsed == {"answer": "Paris"}
    assert "root ::=" in Fake.requests[-1]["structured_outputs"]["grammar"]
    tool = {"name": "search", "description": "Search", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
    called = server.generate(HELLO, tools=[tool], tool_choice="any")
    assert called.tool_calls[0].name == "search" and called.tool_calls[0].arguments == {
        "q": "paris"}
    assert called.finish_reason == "tool_calls"


def test_output_cut_off_by_max_tokens_is_closed_by_the_grammar(server):
    """A small model can loop inside a string until the budget ends: the reply is closed
    here by the grammar (as in-process), so it still parses and validates."""
    Fake.script.update(text='{"answer": "the cat was a cat and the', finish="length")
    schema = {"type": "object", "properties": {"answer": {"type": "string"},
                                               "n": {"type": "integer"}},
              "required": ["answer", "n"]}
    res = server.generate(HELLO, json_schema=schema, max_new_tokens=12)
    assert res.finish_reason == "length"
    assert res.parsed["answer"].startswith("the cat was") and isinstance(res.parsed["n"], int)
    Fake.script["tool_text"] = '<tool_call>[{"name": "search", "arguments": {"q": "par'
    tool = {"name": "search", "description": "Search", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
    called = server.generate(HELLO, tools=[tool], tool_choice="any", max_new_tokens=12)
    assert called.tool_calls[0].name == "search"
    assert called.tool_calls[0].arguments["q"].startswith("par")


def test_label_probabilities_from_log_probabilities(server):
    tok = server.tokenizer
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    Fake.script["probs"] = {yes: 0.6, no: 0.2}
    (row,) = server.label_probabilities([HELLO], labels=("yes", "no"), expert="critic")
    assert row == pytest.approx({"yes": 0.75, "no": 0.25})
    (raw,) = server.label_probabilities([HELLO], labels=("yes", "no"), normalize=False)
    assert raw == pytest.approx({"yes": 0.6, "no": 0.2})
    sent = Fake.requests[-1]
    assert sent["max_tokens"] == 1 and sent["logprob_token_ids"] == [yes, no]
    Fake.script["no_logprobs"] = True
    with pytest.raises(ServerCapabilityError, match="log-probabilities"):
        server.label_probabilities([HELLO])


def test_beam_search_is_refused_over_the_server(server):
    assert server.generate(HELLO, num_beams=1).text  # greedy is what the server does
    with pytest.raises(ServerCapabilityError, match="in-process only"):
        server.generate(HELLO, num_beams=3)
    with pytest.raises(InputError, match="num_beams"):
        server.generate(HELLO, num_beams=0)
    with pytest.raises(ServerCapabilityError, match="in-process only"):
        list(server.stream(HELLO, num_beams=2))


def test_refusal_gate_over_the_server(server):
    from expertrag.rag import REFUSAL

    first = server.tokenizer(REFUSAL, add_special_tokens=False)["input_ids"][0]
    Fake.script["probs"] = {first: 0.9}
    refused = server.generate(HELLO, refusal_threshold=0.5)
    assert refused.text == REFUSAL and refused.refusal_probability == pytest.approx(0.9)
    Fake.script["probs"] = {first: 0.2}
    answered = server.generate(HELLO, refusal_threshold=0.5)
    assert answered.text == "Paris [1]." and Fake.requests[-1]["logit_bias"] == {
        str(first): -100}


def test_streaming_and_async(server):
    chunks = list(server.stream(HELLO, expert="grounded-qa", refusal_gate=False))
    assert "".join(c.text for c in chunks) == "Paris [1]."
    assert chunks[-1].final.completion_tokens == 3

    import asyncio

    async def go():
        res = await server.agenerate(HELLO)
        pieces = [c.text async for c in server.astream(HELLO)]
        return res, pieces

    res, pieces = asyncio.run(go())
    assert res.text == "Paris [1]." and "".join(pieces) == "Paris [1]."


def test_runtime_adapter_loading_and_errors(server):
    server.add_expert("relevance", "/srv/experts/relevance")
    assert "relevance" in server.experts
    assert Fake.requests[-1] == {"path": "/v1/load_lora_adapter", "lora_name": "relevance",
                                 "lora_path": "/srv/experts/relevance"}
    with pytest.raises(UnknownExpertError, match="not served"):
        server.generate(HELLO, expert="nope")
    with pytest.raises(InputError, match="max_new_tokens"):
        server.generate(HELLO, max_new_tokens=0)
    down = ServerLLM("http://127.0.0.1:9/v1", tokenizer=server.tokenizer, timeout=2)
    with pytest.raises(ServerError, match="cannot reach"):
        down.generate(HELLO)
    with pytest.raises(InputError, match="base_url"):
        ServerLLM(None)


def test_a_slow_server_is_a_timeout():
    class Slow(Fake):
        def do_GET(self) -> None:
            import time

            time.sleep(2)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    llm = ServerLLM(f"http://127.0.0.1:{httpd.server_address[1]}", tokenizer=tiny_tokenizer(),
                    timeout=0.3)
    with pytest.raises(ServerTimeoutError):
        llm.generate(HELLO)
    httpd.shutdown()


def test_components_run_unchanged_on_the_server(server):
    from expertrag.reflection import Critic
    from expertrag.rerank.llm import LLMReranker

    tok = server.tokenizer
    Fake.script["probs"] = {tok("yes", add_special_tokens=False)["input_ids"][0]: 0.8}
    scores = LLMReranker(server, expert="critic").score("Where?", ["A passage."])
    assert 0.0 < scores[0] <= 1.0
    (j,) = Critic(server).retrieve(["Who founded Rome?"])
    assert set(j.probs) == {"yes", "no"}


def test_the_framework_skins_take_a_server_client(server):
    pytest.importorskip("langchain_core")
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import ChatMessage

    from expertrag.langchain import ChatExpertLLM
    from expertrag.llama_index import ExpertLlamaLLM

    chat = ChatExpertLLM.from_core(server, expert="grounded-qa")
    assert chat.invoke("Where is the Eiffel tower?").content == "Paris [1]."
    assert Fake.requests[-1]["model"] == "grounded-qa"
    llm = ExpertLlamaLLM.from_core(server)
    assert llm.chat([ChatMessage(role="user", content="Where?")]).message.content == \
        "Paris [1]."
