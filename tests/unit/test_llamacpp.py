"""LlamaCppLLM against a fake llama-server on loopback (its native ``/completion`` API): the
requests it sends (token-id prompts, per-request LoRA, GBNF grammars, banned tokens, top-n
probabilities) and how it reads the answers; the GBNF rewrite; the adapter conversion's
refusals and cache; the server process wrapper's failures. The real server runs in
tests/integration/test_llamacpp_real.py."""

from __future__ import annotations

import json
import math
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tiny_models import tiny_tokenizer

from expertrag.errors import InputError, UnknownExpertError
from expertrag.models.interface import ExpertModel
from expertrag.models.llamacpp import (
    LlamaCppConversionError,
    LlamaCppLLM,
    LlamaCppServer,
    LlamaCppSetupError,
    convert_adapter,
    ebnf_to_gbnf,
    find_llama_server,
)
from expertrag.models.server import ServerCapabilityError, ServerError

pytest.importorskip("httpx")


class Fake(BaseHTTPRequestHandler):
    requests: ClassVar[list[dict[str, Any]]] = []
    script: ClassVar[dict[str, Any]] = {}
    loras: ClassVar[list[dict[str, Any]]] = [
        {"id": 0, "path": "/c/abc/grounded-qa.gguf", "scale": 0.0},
        {"id": 1, "path": "/c/def/critic.gguf", "scale": 0.0}]

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
        if self.path == "/v1/models":
            return self._send(200, {"data": [{"id": "/m/SmolLM2-135M.gguf"}]})
        if self.path == "/props":
            return self._send(200, {"default_generation_settings": {"n_ctx": 1024}})
        if self.path == "/lora-adapters":
            return self._send(200, self.loras)
        return self._send(404, {"error": "no"})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Fake.requests.append({"path": self.path, **body})
        if body.get("n_probs", 0) > 1:  # a one-token probability request
            if "probs_by_prompt" in Fake.script:
                probs = Fake.script["probs_by_prompt"](body["prompt"])
                return self._send(200, {"content": "x", "completion_probabilities": [
                    {"id": 1, "logprob": -0.1, "top_logprobs": [
                        {"id": t, "logprob": math.log(p)} for t, p in probs.items()]}]})
            if Fake.script.get("no_probs"):
                return self._send(200, {"content": "x", "completion_probabilities": []})
            probs = Fake.script.get("probs", {1: 0.5})
            top = [{"id": t, "logprob": math.log(p)} for t, p in probs.items()]
            return self._send(200, {"content": "x", "completion_probabilities": [
                {"id": 1, "logprob": -0.1, "top_logprobs": top}]})
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for piece in ("Paris", " [1]", "."):
                self.wfile.write(f"data: {json.dumps({'content': piece, 'stop': False})}\n\n"
                                 .encode())
            last = {"content": "", "stop": True, "stop_type": "eos", "tokens_evaluated": 5,
                    "tokens_predicted": 3}
            self.wfile.write(f"data: {json.dumps(last)}\n\n".encode())
            return None
        text = Fake.script.get("text", "Paris [1].")
        if "tool_call" in body.get("grammar", ""):
            text = Fake.script.get("tool_text", '<tool_call>[{"name": "search", "arguments": '
                                                '{"q": "paris"}}]</tool_call>')
        out = {"content": text, "stop_type": Fake.script.get("stop_type", "eos"),
               "tokens_evaluated": 7, "tokens_predicted": 2}
        if body.get("n_probs") == 1:
            out["completion_probabilities"] = [{"id": 5, "logprob": -0.1},
                                               {"id": 6, "logprob": -0.2}]
        return self._send(200, out)


@pytest.fixture
def llm():
    Fake.requests.clear()
    Fake.script.clear()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = LlamaCppLLM(f"http://127.0.0.1:{httpd.server_address[1]}",
                         tokenizer=tiny_tokenizer(), concurrency=4)
    yield client
    client.close()
    httpd.shutdown()


HELLO = [{"role": "user", "content": "Where is the Eiffel tower?"}]


def test_it_is_an_expert_model_with_experts_named_by_their_files(llm):
    assert isinstance(llm, ExpertModel)
    assert llm.model_name == "SmolLM2-135M" and llm.experts == ["critic", "grounded-qa"]
    assert llm.context_window == 1024


def test_prompts_are_token_ids_and_the_expert_is_a_per_request_lora(llm):
    res = llm.generate(HELLO, expert="grounded-qa", max_new_tokens=8, stop=["\n"],
                       refusal_gate=False, num_beams=1)  # its card's 3 beams: below
    assert res.text == "Paris [1]." and (res.prompt_tokens, res.completion_tokens) == (7, 2)
    assert res.finish_reason == "stop" and res.expert == "grounded-qa"
    sent = Fake.requests[-1]
    assert sent["path"] == "/completion"
    assert sent["prompt"] == llm.tokenizer(llm.render(HELLO),
                                           add_special_tokens=False)["input_ids"]
    # every adapter's scale spelled out: [] would mean the server's global scales
    assert sent["lora"] == [{"id": 0, "scale": 1.0}, {"id": 1, "scale": 0.0}]
    assert sent["n_predict"] == 8
    assert sent["stop"] == ["\n"] and sent["temperature"] == 0.0
    assert sent["samplers"] == ["temperature"] and sent["repeat_penalty"] == 1.0
    llm.generate(HELLO)
    assert Fake.requests[-1]["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 0.0}]


def test_a_batch_mixes_experts_in_concurrent_requests(llm):
    out = llm.generate([HELLO] * 3, expert=["grounded-qa", None, "critic"], refusal_gate=False,
                       num_beams=1)
    assert [r.expert for r in out] == ["grounded-qa", None, "critic"]
    assert sorted([a["scale"] for a in r["lora"]] for r in Fake.requests) == [
        [0.0, 0.0], [0.0, 1.0], [1.0, 0.0]]


def test_unknown_expert_and_explicit_names(llm):
    with pytest.raises(UnknownExpertError, match="not served"):
        llm.generate(HELLO, expert="nope")
    named = LlamaCppLLM(llm.base_url, tokenizer=llm.tokenizer,
                        expert_names={"qa": 0, "judge": 1})
    assert named.experts == ["judge", "qa"]
    wrong = LlamaCppLLM(llm.base_url, tokenizer=llm.tokenizer, expert_names={"qa": 7})
    with pytest.raises(UnknownExpertError, match="no adapter with id"):
        wrong.experts  # noqa: B018


def test_sampling_options_pass_through(llm):
    llm.generate(HELLO, temperature=0.7, top_p=0.9, seed=3, max_new_tokens=4)
    sent = Fake.requests[-1]
    assert sent["temperature"] == 0.7 and sent["top_p"] == 0.9 and sent["seed"] == 3
    assert "samplers" not in sent and sent["top_k"] == 0 and sent["min_p"] == 0.0


def test_length_finish_and_token_logprobs(llm):
    Fake.script["stop_type"] = "limit"
    res = llm.generate(HELLO, logprobs=True, max_new_tokens=2)
    assert res.finish_reason == "length" and res.logprobs == [-0.1, -0.2]
    assert Fake.requests[-1]["n_probs"] == 1


def test_structured_output_sends_gbnf_and_parses(llm):
    Fake.script["text"] = '{"answer": "Paris"}'
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"]}
    res = llm.generate(HELLO, json_schema=schema)
    assert res.parsed == {"answer": "Paris"}
    grammar = Fake.requests[-1]["grammar"]
    assert "root ::=" in grammar and "_" not in grammar.split("::=")[0]
    assert "{0, -1}" not in grammar and "(=" not in grammar
    tool = {"name": "search", "description": "Search", "parameters": {
        "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}
    called = llm.generate(HELLO, tools=[tool], tool_choice="any")
    assert called.tool_calls[0].name == "search"
    assert called.tool_calls[0].arguments == {"q": "paris"}


def test_output_cut_by_the_budget_is_closed_by_the_grammar(llm):
    Fake.script.update(text='{"answer": "the cat was a cat and the', stop_type="limit")
    schema = {"type": "object", "properties": {"answer": {"type": "string"},
                                               "n": {"type": "integer"}},
              "required": ["answer", "n"]}
    res = llm.generate(HELLO, json_schema=schema, max_new_tokens=12)
    assert res.finish_reason == "length" and isinstance(res.parsed["n"], int)


def test_label_probabilities_from_the_top_n(llm):
    tok = llm.tokenizer
    yes, no = (tok(w, add_special_tokens=False)["input_ids"][0] for w in ("yes", "no"))
    Fake.script["probs"] = {yes: 0.6, no: 0.2}
    (row,) = llm.label_probabilities([HELLO], labels=("yes", "no"), expert="critic")
    assert row == pytest.approx({"yes": 0.75, "no": 0.25})
    sent = Fake.requests[-1]
    assert sent["n_predict"] == 1 and sent["n_probs"] == 100
    assert sent["lora"] == [{"id": 0, "scale": 0.0}, {"id": 1, "scale": 1.0}]
    # sampling pinned to the end token: the server drops the figures of a sampled token
    # that is half of a UTF-8 character
    assert sent["logit_bias"] == [[tok.eos_token_id, 1.0e4]]
    (raw,) = llm.label_probabilities([HELLO], normalize=False)
    assert raw == pytest.approx({"yes": 0.6, "no": 0.2})
    Fake.script["probs"] = {yes: 0.6}  # "no" outside the top n: read as 0
    assert llm.label_probabilities([HELLO])[0] == pytest.approx({"yes": 1.0, "no": 0.0})
    Fake.script["no_probs"] = True
    with pytest.raises(ServerCapabilityError, match="token probabilities"):
        llm.label_probabilities([HELLO])
    with pytest.raises(InputError, match="label_top_n"):
        LlamaCppLLM(llm.base_url, label_top_n=1)


def test_refusal_gate_reads_then_bans_the_refusal_token(llm):
    from expertrag.rag import REFUSAL

    first = llm.tokenizer(REFUSAL, add_special_tokens=False)["input_ids"][0]
    Fake.script["probs"] = {first: 0.9}
    refused = llm.generate(HELLO, refusal_threshold=0.5)
    assert refused.text == REFUSAL and refused.refusal_probability == pytest.approx(0.9)
    Fake.script["probs"] = {first: 0.2}
    answered = llm.generate(HELLO, refusal_threshold=0.5)
    assert answered.text == "Paris [1]." and Fake.requests[-1]["logit_bias"] == [[first, False]]


def test_streaming_and_async(llm):
    chunks = list(llm.stream(HELLO, refusal_gate=False))
    assert "".join(c.text for c in chunks) == "Paris [1]."
    final = chunks[-1].final
    assert (final.prompt_tokens, final.completion_tokens) == (5, 3)
    assert Fake.requests[-1]["stream"] is True

    import asyncio

    async def go() -> tuple[Any, list[str]]:
        res = await llm.agenerate(HELLO)
        pieces = [c.text async for c in llm.astream(HELLO)]
        return res, pieces

    res, pieces = asyncio.run(go())
    assert res.text == "Paris [1]." and "".join(pieces) == "Paris [1]."


def test_adding_an_expert_to_a_server_it_did_not_start_is_a_capability_error(llm, tmp_path):
    with pytest.raises(ServerCapabilityError, match="at start only"):
        llm.add_expert("new", tmp_path)
    llm.add_expert("critic", tmp_path)  # already served: kept


def test_a_down_server_is_a_typed_error():
    with pytest.raises(ServerError, match="cannot reach"):
        LlamaCppLLM("http://127.0.0.1:9", tokenizer=tiny_tokenizer()).experts  # noqa: B018
    with pytest.raises(InputError, match="base_url"):
        LlamaCppLLM()


# ---------------------------------------------------------------------------- GBNF
def test_ebnf_to_gbnf_rewrites_names_repeats_escapes_and_lookaheads():
    ebnf = ('root ::= (("{" basic_string_sub{0, -1} x_y{1, -1} z{2, -1} w{1, 3} "}"))\n'
            'basic_string_sub ::= (("\\"") | ([^\\0-\\x1f\\"\\\\] basic_string_sub)) '
            '(=([ \\n\\r\\t]* [,}\\]:]))\n'
            'x_y ::= ("a_b" | [\\f+\\-])\n')
    out = ebnf_to_gbnf(ebnf).splitlines()
    assert out[0] == 'root ::= (("{" basic-string-sub* x-y+ z{2,} w{1,3} "}"))'
    assert out[1] == 'basic-string-sub ::= (("\\"") | ([^\\x00-\\x1f\\"\\\\] basic-string-sub)) '
    assert out[2] == 'x-y ::= ("a_b" | [\\x0c+\\-])'  # quoted text keeps its underscore


# ---------------------------------------------------------------------------- adapters
def _adapter(folder: Path, **config: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", **config}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


@pytest.mark.parametrize(("config", "reason"), [
    ({"use_dora": True}, "DoRA"),
    ({"peft_type": "IA3"}, "LoRA adapters only"),
    ({"modules_to_save": ["lm_head"]}, "whole modules"),
])
def test_adapters_llama_cpp_cannot_take_are_refused_with_the_reason(tmp_path, config, reason):
    with pytest.raises(LlamaCppConversionError, match=reason):
        convert_adapter(_adapter(tmp_path / "a", **config), tmp_path)


def test_missing_or_pickled_adapters_are_refused(tmp_path):
    with pytest.raises(LlamaCppConversionError, match="does not exist"):
        convert_adapter(tmp_path / "none", tmp_path)
    pickled = tmp_path / "p"
    pickled.mkdir()
    (pickled / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(LlamaCppConversionError, match="pickled"):
        convert_adapter(pickled, tmp_path)
    bad = _adapter(tmp_path / "b")
    (bad / "adapter_config.json").write_text("{nope")
    with pytest.raises(LlamaCppConversionError, match="not JSON"):
        convert_adapter(bad, tmp_path)


def _fake_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, converter: str) -> Path:
    home = tmp_path / "home"
    (home / "0.3.36").mkdir(parents=True)
    (home / "0.3.36" / "convert_lora_to_gguf.py").write_text(converter)
    monkeypatch.setenv("EXPERTRAG_LLAMACPP_HOME", str(home))
    return home


def test_conversion_runs_once_and_is_cached_by_content(tmp_path, monkeypatch):
    converter = ("import sys, pathlib\nargs = sys.argv\n"
                 "out = args[args.index('--outfile') + 1]\n"
                 "pathlib.Path(out).write_bytes(b'GGUF')\n"
                 "log = pathlib.Path(args[-1]) / 'calls'\n"
                 "log.write_text(log.read_text() + 'x' if log.exists() else 'x')\n")
    _fake_home(tmp_path, monkeypatch, converter)
    folder = _adapter(tmp_path / "qa")
    first = convert_adapter(folder, tmp_path, name="qa")
    assert first.name == "qa.gguf" and first.read_bytes() == b"GGUF"
    assert convert_adapter(folder, tmp_path, name="qa") == first
    assert (folder / "calls").read_text() == "x"  # the second call used the cache
    (folder / "adapter_model.safetensors").write_bytes(b"retrained")
    assert convert_adapter(folder, tmp_path, name="qa") != first  # new weights, new file


def test_a_failed_conversion_names_the_converters_reason_and_leaves_nothing(tmp_path,
                                                                              monkeypatch):
    _fake_home(tmp_path, monkeypatch,
               "import sys\nprint('ValueError: unknown base architecture', file=sys.stderr)\n"
               "sys.exit(1)\n")
    with pytest.raises(LlamaCppConversionError, match="unknown base architecture"):
        convert_adapter(_adapter(tmp_path / "qa"), tmp_path, cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.gguf*"))


def test_a_missing_build_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPERTRAG_LLAMACPP_HOME", str(tmp_path))
    monkeypatch.delenv("EXPERTRAG_LLAMA_SERVER", raising=False)
    with pytest.raises(LlamaCppSetupError, match=r"setup_llamacpp\.sh"):
        find_llama_server()
    with pytest.raises(LlamaCppSetupError, match=r"setup_llamacpp\.sh"):
        convert_adapter(_adapter(tmp_path / "qa"), tmp_path)


def _script(path: Path, text: str) -> Path:
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_server_that_exits_at_start_is_a_setup_error_with_its_log(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    binary = _script(tmp_path / "llama-server", "echo 'error: failed to load model'\nexit 3\n")
    server = LlamaCppServer(gguf, [tmp_path / "a.gguf"], binary=binary, parallel=2)
    cmd = server.command()
    assert cmd[cmd.index("--lora") + 1].endswith("a.gguf") and "--lora-init-without-apply" in cmd
    assert cmd[cmd.index("-c") + 1] == str(2 * 2048) and cmd[cmd.index("--host") + 1] == \
        "127.0.0.1"
    with pytest.raises(LlamaCppSetupError, match="failed to load model"):
        server.start()


def test_a_server_that_never_gets_ready_is_stopped(tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    binary = _script(tmp_path / "llama-server", "sleep 30\n")
    server = LlamaCppServer(gguf, binary=binary, startup_timeout=0.5)
    with pytest.raises(LlamaCppSetupError, match="did not become ready"):
        server.start()
    assert server.process is None


def test_server_arguments_are_checked(tmp_path):
    with pytest.raises(LlamaCppSetupError, match="no GGUF"):
        LlamaCppServer(tmp_path / "none.gguf", binary=tmp_path)
    with pytest.raises(InputError, match="parallel"):
        LlamaCppServer(tmp_path / "none.gguf", parallel=0)


def test_the_base_is_rewritten_at_higher_precision_once(tmp_path, monkeypatch):
    from expertrag.models.llamacpp import convert_base

    home = _fake_home(tmp_path, monkeypatch, "")
    (home / "0.3.36" / "convert_hf_to_gguf.py").write_text(
        "import sys, pathlib\nargs = sys.argv\n"
        "pathlib.Path(args[args.index('--outfile') + 1]).write_text(args[-2] + ' ' + args[-3])\n")
    model = tmp_path / "smollm2-abc"
    model.mkdir()
    out = convert_base(model, "f32", cache_dir=tmp_path / "c")
    assert out.name == "smollm2-abc-f32.gguf" and out.read_text() == "f32 --outtype"
    out.write_text("kept")
    assert convert_base(model, "f32", cache_dir=tmp_path / "c").read_text() == "kept"
    with pytest.raises(InputError, match="weights must be one of"):
        convert_base(model, "q8_0")
    with pytest.raises(InputError, match="weights must be one of"):
        LlamaCppLLM.start(weights="bf16")


def test_the_cli_chooses_the_backend(monkeypatch):
    from expertrag import cli

    with pytest.raises(InputError, match="unknown backend"):
        cli.make_llm("smollm2", backend="onnx")
    monkeypatch.delenv("EXPERTRAG_SERVER_URL", raising=False)
    with pytest.raises(InputError, match="needs --server URL"):
        cli.make_llm("smollm2", backend="server")
    with pytest.raises(InputError, match="not 'bfloat16'"):
        cli.make_llm("smollm2", backend="llamacpp", dtype="bfloat16")
    client = cli.make_llm("smollm2", server="http://127.0.0.1:9", backend="llamacpp")
    assert isinstance(client, LlamaCppLLM) and client.base_url == "http://127.0.0.1:9"
    args = cli.build_parser().parse_args(["ask", "q", "--backend", "llamacpp", "--layout",
                                          "merged"])
    assert args.backend == "llamacpp" and args.layout == "merged"
    with pytest.raises(InputError, match="--layout merged applies to"):
        cli.make_llm("smollm2", backend="inprocess", layout="merged")
    started: list[dict[str, Any]] = []
    monkeypatch.setattr(LlamaCppLLM, "start", classmethod(
        lambda cls, **kw: started.append(kw) or "llm"))
    assert cli.make_llm("smollm2", backend="llamacpp", layout="merged") == "llm"
    assert started == [{"model": "smollm2", "weights": "gguf", "layout": "merged"}]


# ---------------------------------------------------------------------------- beam search
def _oracle(table: dict[tuple[int, ...], dict[int, float]]):
    calls: list[list[int]] = []

    def step(prefixes: list[list[int]]) -> list[dict[int, float]]:
        calls.extend(prefixes)
        return [{t: math.log(p) for t, p in table.get(tuple(pre), {0: 1.0}).items()}
                for pre in prefixes]

    return step, calls


TABLE = {(): {1: 0.6, 2: 0.4}, (1,): {3: 0.1, 4: 0.1, 0: 0.1}, (1, 3): {0: 0.2},
         (1, 4): {0: 0.2}, (2,): {0: 0.9, 5: 0.05}}


def test_beam_search_finds_what_greedy_misses():
    from expertrag.models.decoding import beam_search

    step, calls = _oracle(TABLE)
    tokens, score = beam_search(step, 2, 8, eos={0})
    assert tokens == [2] and score == pytest.approx(math.log(0.4) + math.log(0.9))
    assert [1] in calls and [2] in calls  # both beams were followed
    greedy, _ = beam_search(_oracle(TABLE)[0], 1, 8, eos={0})
    assert greedy[:1] == [1]  # one beam keeps the locally best first token


def test_beam_search_bans_the_first_token_and_stops_at_the_budget():
    from expertrag.models.decoding import beam_search

    tokens, _ = beam_search(_oracle(TABLE)[0], 2, 8, eos={0}, banned_first={2})
    assert tokens[0] == 1
    loop = {(): {7: 0.9, 8: 0.1}}
    step, _ = _oracle({**loop, **{(7,) * n: {7: 0.9, 8: 0.1} for n in range(1, 5)},
                       **{(7,) * n + (8,): {7: 0.9, 8: 0.1} for n in range(0, 4)}})
    tokens, _ = beam_search(step, 2, 3, eos={0})
    assert len(tokens) == 3  # never ended: the best running beam at the budget


def test_an_experts_beam_width_runs_over_one_token_requests(llm, monkeypatch):
    tok = llm.tokenizer
    prompt_ids = tok(llm.render(HELLO), add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    answer = tok("Paris", add_special_tokens=False)["input_ids"]

    def next_probs(ids: list[int]) -> dict[int, float]:
        done = len(ids) - len(prompt_ids)
        if done < len(answer):
            return {answer[done]: 0.9, eos: 0.05}
        return {eos: 0.95}

    Fake.script["probs_by_prompt"] = next_probs
    res = llm.generate(HELLO, expert="grounded-qa", num_beams=2, refusal_gate=False)
    assert res.text == "Paris" and res.completion_tokens == len(answer)
    beam_calls = [r for r in Fake.requests if r.get("n_probs") == 5]
    assert beam_calls and all(r["prompt"][:len(prompt_ids)] == prompt_ids for r in beam_calls)
    assert max(len(r["prompt"]) for r in beam_calls) == len(prompt_ids) + len(answer)
    assert all(r["lora"][0]["scale"] == 1.0 for r in beam_calls)
    # a card's width applies to plain greedy calls, as in-process
    card = type("Card", (), {"num_beams": 3, "gate": None})()
    monkeypatch.setitem(llm._cards(), "critic", card)
    Fake.requests.clear()
    assert llm.generate(HELLO, expert="critic").text == "Paris"
    assert {r.get("n_probs") for r in Fake.requests} == {7}
    Fake.requests.clear()
    llm.generate(HELLO, expert="critic", temperature=0.5)  # sampled: no beams
    assert not any(r.get("n_probs") for r in Fake.requests)


def test_a_prompt_that_fills_the_slot_window_is_refused_before_sending(llm):
    from expertrag.errors import ContextWindowExceededError

    long = [{"role": "user", "content": "word " * 1100}]  # the fake's slots hold 1024
    for call in (lambda: llm.generate(long, refusal_gate=False),
                 lambda: llm.label_probabilities([long]),
                 lambda: list(llm.stream(long, refusal_gate=False))):
        with pytest.raises(ContextWindowExceededError, match="context window of 1024"):
            call()
    assert not [r for r in Fake.requests if r["path"] == "/completion"]
