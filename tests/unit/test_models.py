"""The model layer on tiny random models: batching, stops, streaming, experts, grammars."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest
from tiny_models import save_tiny_lora, tiny_causal_lm, tiny_llm, tiny_tokenizer

from expertrag.errors import (
    ContextWindowExceededError,
    ExpertError,
    InputError,
    ModelNotFoundError,
    UnknownExpertError,
)
from expertrag.models import ExpertLLM
from expertrag.models.loading import resolve_source

HELLO = [{"role": "user", "content": "Hello, how are you today?"}]
PROMPTS = [
    [{"role": "user", "content": "The quick brown fox"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "Retrieval augmented generation answers questions"}],
]


def _lively(model: ExpertLLM) -> ExpertLLM:
    """Widen the random weights so the tiny model writes varied (not repeated) tokens."""
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.base_model.parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.5)
    return model


@pytest.fixture(scope="module")
def llm() -> ExpertLLM:
    return _lively(tiny_llm())


@pytest.fixture(scope="module")
def plain() -> ExpertLLM:
    return tiny_llm(name="plain")


@pytest.fixture(scope="module")
def expert_llm(tmp_path_factory: pytest.TempPathFactory) -> ExpertLLM:
    model = tiny_llm(name="tiny-experts")
    root = tmp_path_factory.mktemp("adapters")
    for i, name in enumerate(["alpha", "beta"]):
        model.add_expert(name, save_tiny_lora(model, str(root / name), seed=i + 1))
    return model


# ------------------------------------------------------------------ sources
def test_resolve_source_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        resolve_source("no-such-alias")
    with pytest.raises(ModelNotFoundError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "missing.gguf"))
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_source(str(tmp_path))
    with pytest.raises(InputError):
        resolve_source("")
    assert resolve_source("owner/name").kind == "hub"


# ------------------------------------------------------------------ generation
def test_generate_reports_usage(llm: ExpertLLM) -> None:
    res = llm.generate(HELLO, max_new_tokens=12)
    assert res.prompt_tokens == llm.count_tokens(llm.render(HELLO))
    assert 1 <= res.completion_tokens <= 12
    assert res.finish_reason in ("stop", "length")
    assert res.model_name == "tiny"


def test_batch_is_one_forward_pass_and_matches_single(llm: ExpertLLM, monkeypatch) -> None:
    singles = [llm.generate(p, max_new_tokens=10).text for p in PROMPTS]
    calls = []
    original = llm.base_model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(llm.base_model, "generate", counting)
    batch = llm.generate(PROMPTS, max_new_tokens=10)
    assert calls == [3]  # one generate call for the whole batch
    assert [r.text for r in batch] == singles  # left padding changes nothing


def test_multi_token_stop_sequence(llm: ExpertLLM) -> None:
    import re

    full = llm.generate(HELLO, max_new_tokens=40).text
    match = re.search(r"[A-Za-z0-9 ]{4,}", full[3:])
    assert match, full
    stop = match.group(0)[:4]  # a few characters, usually several tokens, mid-output
    res = llm.generate(HELLO, max_new_tokens=40, stop=[stop])
    assert res.text == full[: full.index(stop)]
    assert res.finish_reason == "stop"
    streamed = "".join(c.text for c in llm.stream(HELLO, max_new_tokens=40, stop=[stop]))
    assert streamed == res.text


def test_stream_matches_generate_and_ends_with_usage(llm: ExpertLLM) -> None:
    chunks = list(llm.stream(HELLO, max_new_tokens=20))
    assert len(chunks) > 2
    assert chunks[-1].final is not None
    assert "".join(c.text for c in chunks) == llm.generate(HELLO, max_new_tokens=20).text
    assert chunks[-1].final.completion_tokens > 0


def test_sampling_is_reproducible_with_seed(llm: ExpertLLM) -> None:
    a = llm.generate(HELLO, temperature=1.0, top_p=0.9, seed=7, max_new_tokens=15).text
    b = llm.generate(HELLO, temperature=1.0, top_p=0.9, seed=7, max_new_tokens=15).text
    assert a == b


def test_prompt_over_context_window_is_a_clear_error() -> None:
    tok = tiny_tokenizer()
    model = tiny_causal_lm(tok)
    model.config.max_position_embeddings = 32
    small = ExpertLLM.from_model(model, tok, name="short")
    with pytest.raises(ContextWindowExceededError, match="context window of 32"):
        small.generate([{"role": "user", "content": "word " * 100}])


@pytest.mark.parametrize("bad", [[], [{"role": "robot", "content": "x"}], [{"content": 3}]])
def test_bad_messages_are_typed_errors(llm: ExpertLLM, bad) -> None:
    with pytest.raises(InputError):
        llm.generate(bad)


def test_bad_arguments(llm: ExpertLLM) -> None:
    with pytest.raises(InputError, match="max_new_tokens"):
        llm.generate(HELLO, max_new_tokens=0)
    with pytest.raises(InputError, match="stop"):
        llm.generate(HELLO, stop=[""])
    with pytest.raises(InputError, match="unknown generation arguments"):
        list(llm.stream(HELLO, temprature=0.1))


async def test_async_does_not_block_event_loop(llm: ExpertLLM) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    task = asyncio.create_task(ticker())
    res = await llm.agenerate(HELLO, max_new_tokens=30)
    chunks = [c async for c in llm.astream(HELLO, max_new_tokens=10)]
    task.cancel()
    assert res.completion_tokens > 0 and chunks[-1].final is not None
    assert ticks > 0


# ------------------------------------------------------------------ beam search
def _hf_beams(model: ExpertLLM, messages, beams: int, new: int) -> str:
    """transformers' own beam search on one unpadded prompt: the reference."""
    import torch

    from expertrag.models.llm import render_prompt

    ids = model.tokenizer(render_prompt(model.tokenizer, messages), return_tensors="pt",
                          add_special_tokens=False)
    with torch.inference_mode():
        out = model.base_model.generate(**ids, max_new_tokens=new, do_sample=False,
                                        num_beams=beams, length_penalty=1.0,
                                        pad_token_id=model.tokenizer.pad_token_id)
    return model.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


def test_beam_search_matches_transformers_row_by_row_in_a_padded_batch(llm: ExpertLLM) -> None:
    batch = llm.generate(PROMPTS, max_new_tokens=8, num_beams=3)
    assert [r.text for r in batch] == [_hf_beams(llm, p, 3, 8) for p in PROMPTS]
    assert all(r.completion_tokens > 0 for r in batch)
    # one beam is greedy decoding
    assert llm.generate(HELLO, max_new_tokens=8, num_beams=1).text == \
        llm.generate(HELLO, max_new_tokens=8).text


def test_beam_search_keeps_the_refusal_gate_per_row(llm: ExpertLLM) -> None:
    from expertrag.rag import REFUSAL

    greedy = llm.generate(PROMPTS, max_new_tokens=6, refusal_threshold=1.0)
    barred = llm.generate(PROMPTS, max_new_tokens=6, refusal_threshold=1.0, num_beams=3)
    first = llm.tokenizer(REFUSAL, add_special_tokens=False)["input_ids"][0]
    for g, b in zip(greedy, barred, strict=True):
        # read from the same first step, whatever the beams do afterwards
        assert b.refusal_probability == pytest.approx(g.refusal_probability, rel=1e-4)
        assert llm.tokenizer(b.text, add_special_tokens=False)["input_ids"][:1] != [first]
    forced = llm.generate(PROMPTS, max_new_tokens=6, refusal_threshold=0.0, num_beams=3)
    assert [r.text for r in forced] == [REFUSAL] * len(PROMPTS)


def test_beam_search_in_a_mixed_expert_batch_matches_single_calls(expert_llm: ExpertLLM
                                                                   ) -> None:
    experts = ["alpha", None, "beta"]
    mixed = expert_llm.generate(PROMPTS, expert=experts, max_new_tokens=6, num_beams=2)
    singles = [expert_llm.generate(p, expert=e, max_new_tokens=6, num_beams=2)
               for p, e in zip(PROMPTS, experts, strict=True)]
    assert [r.text for r in mixed] == [r.text for r in singles]


def test_an_expert_ships_its_beam_width(tmp_path: Path) -> None:
    from expertrag.models.llm import EXPERT_METADATA

    model = _lively(tiny_llm(name="beamed"))
    folder = Path(save_tiny_lora(model, str(tmp_path / "beamed"), seed=3))
    (folder / EXPERT_METADATA).write_text(json.dumps({"decoding": {"num_beams": 3}}))
    model.add_expert("beamed", folder)
    assert model.expert_info("beamed")["num_beams"] == 3
    default = model.generate(PROMPTS, expert="beamed", max_new_tokens=8)
    assert [r.text for r in default] == [
        r.text for r in model.generate(PROMPTS, expert="beamed", max_new_tokens=8, num_beams=3)]
    greedy = model.generate(PROMPTS, expert="beamed", max_new_tokens=8, num_beams=1)
    assert [r.text for r in default] != [r.text for r in greedy]  # the setting is applied
    # a batch mixing it with the base: the base rows stay greedy, the expert rows beam
    mixed = model.generate(PROMPTS[:2], expert=["beamed", None], max_new_tokens=8)
    assert mixed[0].text == default[0].text
    assert mixed[1].text == model.generate(PROMPTS[1], max_new_tokens=8).text
    # sampling, grammars and log-probabilities keep their own decoding
    assert model.generate(HELLO, expert="beamed", logprobs=True, max_new_tokens=4).logprobs
    assert model.generate(HELLO, expert="beamed", json_mode=True, max_new_tokens=12).parsed \
        is not None
    for bad in ({"num_beams": 0}, {"num_beams": 99}, "three"):
        bad_folder = Path(save_tiny_lora(model, str(tmp_path / f"bad{len(str(bad))}")))
        (bad_folder / EXPERT_METADATA).write_text(json.dumps({"decoding": bad}))
        with pytest.raises(ExpertError, match="num_beams"):
            model.add_expert(f"bad{len(str(bad))}", bad_folder)


def test_beam_search_streams_its_answer_whole(llm: ExpertLLM) -> None:
    chunks = list(llm.stream(HELLO, max_new_tokens=8, num_beams=2))
    assert chunks[-1].final is not None
    assert "".join(c.text for c in chunks) == llm.generate(HELLO, max_new_tokens=8,
                                                           num_beams=2).text


@pytest.mark.parametrize("kwargs", [{"num_beams": 0}, {"num_beams": True}, {"num_beams": 2.0},
                                    {"num_beams": 2, "temperature": 0.7},
                                    {"num_beams": 2, "json_mode": True},
                                    {"num_beams": 2, "logprobs": True}])
def test_bad_beam_arguments(llm: ExpertLLM, kwargs) -> None:
    with pytest.raises(InputError, match="num_beams"):
        llm.generate(HELLO, **kwargs)


# ------------------------------------------------------------------ structured output
SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
     "required": ["name", "age"]},
    {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"},
                                               "maxItems": 3},
                                      "ok": {"type": "boolean"}}, "required": ["tags", "ok"]},
    {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}},
     "required": ["color"]},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_output_always_validates(plain: ExpertLLM, schema) -> None:
    import jsonschema

    for prompt in (HELLO, *PROMPTS):
        res = plain.generate(prompt, json_schema=schema, max_new_tokens=400)
        jsonschema.validate(res.parsed, schema)
        assert json.loads(res.text) == res.parsed


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_closes_even_when_tokens_run_out(llm: ExpertLLM, schema) -> None:
    """A rambling model (random weights, sampling) cut off by max_new_tokens mid-value
    still returns JSON that parses and validates: the grammar closes it."""
    import jsonschema

    for seed in range(3):
        res = llm.generate(HELLO, json_schema=schema, temperature=1.0, seed=seed,
                           max_new_tokens=12)
        jsonschema.validate(res.parsed, schema)


def test_json_mode_gives_an_object(plain: ExpertLLM) -> None:
    res = plain.generate(HELLO, json_mode=True, max_new_tokens=400)
    assert isinstance(res.parsed, dict)


ADD = {"name": "add", "description": "Add two integers.",
       "parameters": {"type": "object", "properties": {"a": {"type": "integer"},
                                                       "b": {"type": "integer"}},
                      "required": ["a", "b"]}}
ECHO = {"type": "function", "function": {"name": "echo", "description": "Echo text.",
                                         "parameters": {"type": "object", "properties": {
                                             "text": {"type": "string", "maxLength": 20}},
                                             "required": ["text"]}}}


@pytest.mark.parametrize("choice", ["any", "add", "echo", "required"])
def test_forced_tool_calls_always_parse(plain: ExpertLLM, choice: str) -> None:
    res = plain.generate(HELLO, tools=[ADD, ECHO], tool_choice=choice, max_new_tokens=300)
    assert res.tool_calls and res.finish_reason == "tool_calls" and res.text == ""
    for call in res.tool_calls:
        assert call.name in ("add", "echo") and call.id.startswith("call_")
        if call.name == "add":
            assert set(call.arguments) == {"a", "b"}
    if choice in ("add", "echo"):
        assert {c.name for c in res.tool_calls} == {choice}


def test_tool_choice_none_and_unknown(llm: ExpertLLM) -> None:
    res = llm.generate(HELLO, tools=[ADD], tool_choice="none", max_new_tokens=5)
    assert res.tool_calls == []
    with pytest.raises(InputError, match="names no bound tool"):
        llm.generate(HELLO, tools=[ADD], tool_choice="mul")


def test_auto_does_not_repeat_an_answered_call(plain: ExpertLLM) -> None:
    llm = plain
    first = llm.generate(HELLO, tools=[ADD], tool_choice="any", max_new_tokens=300)
    call = first.tool_calls[0]
    history = [
        *HELLO,
        {"role": "assistant", "content": "",
         "tool_calls": [{"name": call.name, "arguments": call.arguments, "id": call.id}]},
        {"role": "tool", "content": "3", "name": "add", "tool_call_id": call.id},
    ]
    res = llm.generate(history, tools=[ADD], max_new_tokens=300)
    keys = [(c.name, json.dumps(c.arguments, sort_keys=True)) for c in res.tool_calls]
    assert (call.name, json.dumps(call.arguments, sort_keys=True)) not in keys
    assert res.tool_calls or res.finish_reason in ("stop", "length")


def test_label_probabilities_sum_to_one(llm: ExpertLLM) -> None:
    probs = llm.label_probabilities([HELLO, PROMPTS[0]], labels=("true", "false"))
    assert len(probs) == 2
    for p in probs:
        assert set(p) == {"true", "false"} and abs(sum(p.values()) - 1) < 1e-5


def test_label_probabilities_do_not_depend_on_the_batch(expert_llm: ExpertLLM) -> None:
    """Mixed lengths and mixed experts, planned into batches: each row's probabilities equal
    its own single-row call (left padding with per-row positions changes nothing)."""
    convs = [HELLO, *PROMPTS, [{"role": "user", "content": "word " * 60}]]
    experts = ["alpha", None, "beta", "alpha", None]
    batched = expert_llm.label_probabilities(convs, labels=("yes", "no"), expert=experts,
                                             batch_size=3)
    for conv, expert, got in zip(convs, experts, batched, strict=True):
        (alone,) = expert_llm.label_probabilities([conv], labels=("yes", "no"), expert=expert)
        assert got == pytest.approx(alone, abs=1e-4)


def test_a_bf16_model_gives_label_probabilities_from_an_fp32_head(tmp_path: Path) -> None:
    """bf16 logits move P(label) in steps of up to a few hundredths: the label logits are
    the head's product redone in fp32 on the same hidden state."""
    import torch

    from expertrag.models.decoding import left_pad
    from expertrag.models.request import label_token_ids

    llm = _experts_llm(tmp_path, None, dtype="bfloat16")
    convs = [HELLO, *PROMPTS]
    labels = ("true", "false")
    got = llm.label_probabilities(convs, labels=labels)
    ids = label_token_ids(llm.tokenizer, labels)
    head = llm.base_model.get_output_embeddings()
    for conv, probs in zip(convs, got, strict=True):
        rows = llm.tokenizer([llm.render(conv)], add_special_tokens=False)["input_ids"]
        seen: list[torch.Tensor] = []
        hook = head.register_forward_pre_hook(lambda _m, args, out=seen: out.append(args[0]))
        with torch.inference_mode():
            logits = llm.base_model(**left_pad(rows, 0, "cpu"), logits_to_keep=1).logits
        hook.remove()
        exact = torch.softmax(seen[0][0, -1].float() @ head.weight[ids].float().t(), dim=-1)
        rounded = torch.softmax(logits[0, -1, ids].float(), dim=-1)
        assert [probs[t] for t in labels] == pytest.approx(exact.tolist(), abs=1e-6)
        assert logits.dtype == torch.bfloat16 and not torch.equal(exact, rounded)
    full = llm.label_probabilities(convs, labels=labels, normalize=False)
    assert all(0 < sum(p.values()) < 1 for p in full)


# ------------------------------------------------------------------ experts
def test_experts_change_output_and_can_be_listed(expert_llm: ExpertLLM) -> None:
    assert expert_llm.experts == ["alpha", "beta"]
    base = expert_llm.generate(HELLO, max_new_tokens=12).text
    alpha = expert_llm.generate(HELLO, expert="alpha", max_new_tokens=12).text
    beta = expert_llm.generate(HELLO, expert="beta", max_new_tokens=12).text
    assert len({base, alpha, beta}) == 3
    assert expert_llm.generate(HELLO, max_new_tokens=12).text == base  # base is restored


def test_unknown_expert(expert_llm: ExpertLLM) -> None:
    with pytest.raises(UnknownExpertError, match="unknown expert 'gamma'"):
        expert_llm.generate(HELLO, expert="gamma")


def test_mixed_expert_batch_matches_single_calls(expert_llm: ExpertLLM) -> None:
    experts = ["alpha", None, "beta"]
    singles = [expert_llm.generate(p, expert=e, max_new_tokens=10).text
               for p, e in zip(PROMPTS, experts, strict=True)]
    mixed = expert_llm.generate(PROMPTS, expert=experts, max_new_tokens=10)
    assert [r.text for r in mixed] == singles
    assert [r.expert for r in mixed] == experts


def test_concurrent_callers_each_get_their_own_expert(expert_llm: ExpertLLM) -> None:
    expected = {e: expert_llm.generate(HELLO, expert=e, max_new_tokens=10).text
                for e in ("alpha", "beta", None)}
    barrier = threading.Barrier(6)
    got: list[tuple[str | None, str]] = []

    def call(expert: str | None) -> None:
        barrier.wait()
        for _ in range(3):
            got.append((expert, expert_llm.generate(HELLO, expert=expert,
                                                    max_new_tokens=10).text))

    threads = [threading.Thread(target=call, args=(e,)) for e in ("alpha", "beta", None) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 18
    assert all(text == expected[e] for e, text in got)


def test_routing_matches_peft_switching(expert_llm: ExpertLLM, monkeypatch) -> None:
    """The fast per-call routing gives exactly the logits peft's own switching gives."""
    import torch
    from peft.tuners.tuners_utils import BaseTunerLayer

    peft = expert_llm._peft
    enc = expert_llm.tokenizer("Hello there, expert", return_tensors="pt")

    def logits() -> torch.Tensor:
        with torch.inference_mode():
            return peft(**enc).logits

    def reference() -> dict[str | None, torch.Tensor]:
        out: dict[str | None, torch.Tensor] = {}
        for e in ("alpha", "beta"):
            peft.base_model.enable_adapter_layers()
            peft.set_adapter(e, inference_mode=True)
            out[e] = logits()
        with peft.disable_adapter():
            out[None] = logits()
        peft.requires_grad_(False)
        return out

    expected = expert_llm._worker.run(reference)
    assert not torch.allclose(expected["alpha"], expected["beta"])
    assert not torch.allclose(expected["alpha"], expected[None])

    def walk(*args, **kwargs):  # peft's model walk is what routing avoids
        raise AssertionError("set_adapter called while serving")

    monkeypatch.setattr(BaseTunerLayer, "set_adapter", walk)
    for e in ("beta", None, "alpha", None, "beta", "alpha", "alpha"):
        got = expert_llm._worker.run(lambda e=e: (expert_llm._prepare([e]), logits())[1])
        torch.testing.assert_close(got, expected[e])


def test_merged_mode_serves_the_same_output(expert_llm: ExpertLLM) -> None:
    unmerged = expert_llm.generate(HELLO, expert="alpha", max_new_tokens=10).text
    expert_llm.merge("alpha")
    try:
        assert expert_llm.generate(HELLO, expert="alpha", max_new_tokens=10).text == unmerged
        # another expert still works while alpha is the merged one
        beta = expert_llm.generate(HELLO, expert="beta", max_new_tokens=10).text
        assert beta != unmerged
        assert expert_llm.generate(HELLO, expert="alpha", max_new_tokens=10).text == unmerged
    finally:
        expert_llm.merge(None)


def _experts_llm(root: Path, merge_tokens: int | None, dtype: str = "float32") -> ExpertLLM:
    """A fresh tiny model with experts alpha and beta (the same weights every time)."""
    import torch

    model = tiny_causal_lm(tiny_tokenizer(), seed=3)
    model = model.to(getattr(torch, dtype))
    llm = ExpertLLM.from_model(model, tiny_tokenizer(), name=f"merge-{dtype}",
                               merge_tokens=merge_tokens)
    for i, name in enumerate(["alpha", "beta"]):
        llm.add_expert(name, save_tiny_lora(llm, str(root / name), seed=i + 1))
    return llm


def _weights(llm: ExpertLLM) -> dict[str, object]:
    return {k: v.detach().clone() for k, v in llm.base_model.state_dict().items()
            if "lora_" not in k}


def test_large_calls_run_on_merged_weights_with_the_same_output(tmp_path: Path) -> None:
    import torch

    from expertrag.experts.hop import LABELS

    routed = _experts_llm(tmp_path, merge_tokens=None)
    merged = _experts_llm(tmp_path, merge_tokens=1)  # every call is large enough
    before = _weights(merged)
    pairs = [[{"role": "user", "content": f"Is {w} a colour? Answer yes or no."}]
             for w in ("red", "loud", "green", "fast")]
    for expert in ("alpha", "beta", None):
        want = routed.label_probabilities(pairs, labels=LABELS, expert=expert)
        got = merged.label_probabilities(pairs, labels=LABELS, expert=expert)
        assert merged._adapters.merged == expert  # served merged (the base: unmerged)
        for w, g in zip(want, got, strict=True):
            assert g == pytest.approx(w, abs=1e-5)
        assert [r.text for r in merged.generate(PROMPTS, expert=expert, max_new_tokens=8)] \
            == [r.text for r in routed.generate(PROMPTS, expert=expert, max_new_tokens=8)]
    # a mixed batch after a merged call goes back to per-row adapters on the base weights
    mixed = ["alpha", None, "beta"]
    assert [r.text for r in merged.generate(PROMPTS, expert=mixed, max_new_tokens=8)] == \
        [r.text for r in routed.generate(PROMPTS, expert=mixed, max_new_tokens=8)]
    assert merged._adapters.merged is None
    after = _weights(merged)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_small_calls_stay_unmerged_and_large_ones_merge(tmp_path: Path) -> None:
    llm = _experts_llm(tmp_path, merge_tokens=400)
    llm.generate(HELLO, expert="alpha", max_new_tokens=4)  # ~20 tokens of work
    assert llm._adapters.merged is None
    llm.generate([HELLO] * 8, expert="alpha", max_new_tokens=48)  # 8 x (prompt + 48)
    assert llm._adapters.merged == "alpha"
    llm.generate(HELLO, expert="alpha", max_new_tokens=4)
    assert llm._adapters.merged is None  # a call's numbers depend on its own size only


def test_a_bf16_base_comes_back_bit_for_bit_after_merging(tmp_path: Path) -> None:
    """peft's unmerge subtracts the delta again, which in bf16 leaves rounding behind."""
    import torch

    llm = _experts_llm(tmp_path, merge_tokens=1, dtype="bfloat16")
    before = _weights(llm)
    base_out = [r.text for r in llm.generate(PROMPTS, max_new_tokens=8)]
    for expert in ("alpha", "beta", "alpha", None):
        llm.generate(PROMPTS, expert=expert, max_new_tokens=8)
    llm.merge("beta")
    llm.generate(PROMPTS, expert="beta", max_new_tokens=8)
    llm.merge(None)
    llm.generate(PROMPTS, expert=["alpha", None, "beta"], max_new_tokens=8)
    after = _weights(llm)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [r.text for r in llm.generate(PROMPTS, max_new_tokens=8)] == base_out


def test_expertrag_merge_0_keeps_every_call_unmerged(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    llm = _experts_llm(tmp_path, merge_tokens=1)
    monkeypatch.setenv("EXPERTRAG_MERGE", "0")
    llm.generate(PROMPTS, expert="alpha", max_new_tokens=8)
    assert llm._adapters.merged is None
    monkeypatch.delenv("EXPERTRAG_MERGE")
    llm.generate(PROMPTS, expert="alpha", max_new_tokens=8)
    assert llm._adapters.merged == "alpha"


@pytest.mark.parametrize("bad", [0, -5, True, 2.5, "many"])
def test_merge_tokens_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(InputError, match="merge_tokens"):
        ExpertLLM(merge_tokens=bad)  # type: ignore[arg-type]


def test_attach_errors(tmp_path: Path) -> None:
    model = tiny_llm(name="attach")
    with pytest.raises(ExpertError, match="adapter folder not found"):
        model.add_expert("x", tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ExpertError, match=r"no adapter_config\.json"):
        model.add_expert("x", empty)
    good = Path(save_tiny_lora(model, str(tmp_path / "good")))
    (good / "adapter_model.safetensors").rename(good / "adapter_model.bin")
    with pytest.raises(ExpertError, match="pickle"):
        model.add_expert("x", good)
    with pytest.raises(ExpertError, match="invalid expert name"):
        model.add_expert("bad name!", good)


def test_adapter_for_another_base_is_refused(tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer()
    other = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=48,
                                         intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    other_llm = ExpertLLM.from_model(other, tok, name="other")
    path = save_tiny_lora(other_llm, str(tmp_path / "other"))
    model = tiny_llm(name="mine")
    with pytest.raises(ExpertError, match="trained for another base"):
        model.add_expert("other", path)
    # same shapes, but the adapter records another base's fingerprint
    path2 = Path(save_tiny_lora(model, str(tmp_path / "fp")))
    (path2 / "expertrag_expert.json").write_text(
        json.dumps({"base": {"name": "elsewhere", "fingerprint": "0123456789abcdef"}}))
    with pytest.raises(ExpertError, match=r"was trained for base 'elsewhere'"):
        model.add_expert("fp", path2)


def test_remove_expert_restores_base(tmp_path: Path) -> None:
    model = tiny_llm(name="remove")
    base = model.generate(HELLO, max_new_tokens=10).text
    model.add_expert("a", save_tiny_lora(model, str(tmp_path / "a")))
    model.add_expert("b", save_tiny_lora(model, str(tmp_path / "b"), seed=3))
    model.remove_expert("a")
    assert model.experts == ["b"]
    model.remove_expert("b")
    assert model.experts == []
    assert model.generate(HELLO, max_new_tokens=10).text == base


def test_dora_experts_in_a_mixed_batch(tmp_path: Path) -> None:
    import copy

    from peft import LoraConfig, get_peft_model

    model = tiny_llm(name="dora")
    peft_model = get_peft_model(copy.deepcopy(model.base_model), LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], use_dora=True, init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "d")
    model.add_expert("d", tmp_path / "d")
    model.add_expert("lo", save_tiny_lora(model, str(tmp_path / "lo")))
    singles = [model.generate(p, expert=e, max_new_tokens=8).text
               for p, e in zip(PROMPTS, ["d", "lo", None], strict=True)]
    mixed = model.generate(PROMPTS, expert=["d", "lo", None], max_new_tokens=8)
    assert [r.text for r in mixed] == singles
    # large calls: plain LoRA merges on its own, DoRA (peft's slow, inexact merge) does not
    model.merge_tokens = 1
    try:
        model.generate(PROMPTS, expert="lo", max_new_tokens=8)
        assert model._adapters.merged == "lo"
        assert [r.text for r in model.generate(PROMPTS, expert="d", max_new_tokens=8)] == \
            [model.generate(p, expert="d", max_new_tokens=8).text for p in PROMPTS]
        assert model._adapters.merged is None
    finally:
        model.merge_tokens = None


def test_tool_schemas_with_defs_and_a_title_property(plain: ExpertLLM) -> None:
    """pydantic tool schemas carry $defs; a property literally named "title" survives."""
    from pydantic import BaseModel

    class Author(BaseModel):
        name: str

    class Book(BaseModel):
        title: str
        author: Author

    tool = {"name": "save_book", "description": "Save a book.",
            "parameters": Book.model_json_schema()}
    res = plain.generate(HELLO, tools=[tool, ADD], tool_choice="save_book", max_new_tokens=60)
    book = Book.model_validate(res.tool_calls[0].arguments)  # closed by grammar if cut off
    assert isinstance(book.author, Author)


def test_parallel_tool_calls_off_gives_one_call(plain: ExpertLLM) -> None:
    res = plain.generate(HELLO, tools=[ADD, ECHO], tool_choice="any",
                         parallel_tool_calls=False, max_new_tokens=300)
    assert len(res.tool_calls) == 1


def test_schema_is_shown_in_the_prompt(plain: ExpertLLM) -> None:
    from expertrag.models.chat import render_prompt

    prompt = render_prompt(plain.tokenizer, HELLO, json_schema=SCHEMAS[2])
    assert '"enum": ["red", "green", "blue"]' in prompt


def test_logprobs_are_the_greedy_tokens_log_probabilities(
        llm: ExpertLLM, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from transformers.generation import utils as generation_utils

    warned: list[str] = []
    monkeypatch.setattr(generation_utils.logger, "warning_once",
                        lambda msg, *a, **k: warned.append(str(msg)))
    res = llm.generate(HELLO, max_new_tokens=5, logprobs=True)
    # the score outputs ride on the GenerationConfig: no deprecation warning for users
    assert not [w for w in warned if "generation_config" in w], warned
    assert res.logprobs is not None and len(res.logprobs) == res.completion_tokens
    assert all(lp <= 0 for lp in res.logprobs)
    assert res.mean_logprob == pytest.approx(sum(res.logprobs) / len(res.logprobs))
    # the first token's log-probability from a plain forward pass of the prompt
    ids = llm.tokenizer(llm.render(HELLO), return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        logits = llm.base_model(**ids).logits[0, -1].float()
    # greedy decoding picks the most probable token
    assert res.logprobs[0] == pytest.approx(float(torch.log_softmax(logits, -1).max()),
                                            abs=1e-4)
    assert llm.generate(HELLO, max_new_tokens=3).logprobs is None
    batch = llm.generate(PROMPTS, max_new_tokens=4, logprobs=True)
    assert [len(r.logprobs) for r in batch] == [r.completion_tokens for r in batch]


def test_continue_final_message_extends_a_partial_answer(llm: ExpertLLM) -> None:
    partial = [*HELLO, {"role": "assistant", "content": "The quick"}]
    prompt = llm.tokenizer.apply_chat_template(partial, tokenize=False,
                                               continue_final_message=True)
    assert llm.render(HELLO) in prompt and prompt.endswith("The quick")
    res = llm.generate(partial, max_new_tokens=4, continue_final_message=True)
    assert res.prompt_tokens == llm.count_tokens(prompt)
    with pytest.raises(InputError, match="final assistant message"):
        llm.generate(HELLO, max_new_tokens=2, continue_final_message=True)


def test_label_probabilities_on_raw_prompts(llm: ExpertLLM) -> None:
    raw = llm.label_probabilities(["### Instruction:\nHi\n\n### Response:\n"],
                                  labels=("yes", "no"), raw=True)[0]
    assert sum(raw.values()) == pytest.approx(1.0)
    templated = llm.label_probabilities([HELLO], labels=("yes", "no"))[0]
    same = llm.label_probabilities([llm.render(HELLO)], labels=("yes", "no"), raw=True)[0]
    assert same == pytest.approx(templated)
    with pytest.raises(InputError, match="raw=True"):
        llm.label_probabilities([HELLO], raw=True)


# ------------------------------------------------------------------ refusal gate
def test_refusal_gate_decides_by_probability(llm: ExpertLLM) -> None:
    from expertrag.rag import REFUSAL

    first = llm.tokenizer(REFUSAL, add_special_tokens=False)["input_ids"][0]
    p = llm.label_probabilities([HELLO], labels=(llm.tokenizer.decode([first]),),
                                normalize=False)[0]
    always = llm.generate(HELLO, max_new_tokens=6, refusal_threshold=0.0)
    assert always.text == REFUSAL and always.finish_reason == "stop"
    assert always.refusal_probability == pytest.approx(next(iter(p.values())), rel=1e-3)
    never = llm.generate([HELLO, PROMPTS[0]], max_new_tokens=6, refusal_threshold=1.0)
    for res in never:
        assert res.text != REFUSAL and 0.0 <= res.refusal_probability < 1.0
    plain_run = llm.generate(HELLO, max_new_tokens=6)
    assert plain_run.refusal_probability is None  # no expert gate, no threshold: untouched
    with pytest.raises(InputError, match="refusal_threshold"):
        llm.generate(HELLO, refusal_threshold=1.5)


def test_an_expert_ships_its_gate(tmp_path: Path) -> None:
    from expertrag.models.llm import EXPERT_METADATA
    from expertrag.rag import REFUSAL

    model = tiny_llm(name="gated")
    folder = Path(save_tiny_lora(model, str(tmp_path / "gated")))
    (folder / EXPERT_METADATA).write_text(json.dumps(
        {"refusal_gate": {"text": REFUSAL, "threshold": 0.0}}))
    model.add_expert("gated", folder)
    assert model.expert_info("gated")["gate"] == (REFUSAL, 0.0)
    mixed = model.generate([HELLO, HELLO], expert=["gated", None], max_new_tokens=5)
    assert mixed[0].text == REFUSAL and mixed[0].refusal_probability is not None
    assert mixed[1].refusal_probability is None
    off = model.generate(HELLO, expert="gated", max_new_tokens=5, refusal_gate=False)
    assert off.refusal_probability is None
    streamed = "".join(c.text for c in model.stream(HELLO, expert="gated", max_new_tokens=5))
    assert streamed == REFUSAL
    bad = Path(save_tiny_lora(model, str(tmp_path / "bad")))
    (bad / EXPERT_METADATA).write_text(json.dumps({"refusal_gate": {"threshold": 2}}))
    with pytest.raises(ExpertError, match="refusal_gate"):
        model.add_expert("bad", bad)


@pytest.mark.parametrize(("native", "expected"), [(True, "bfloat16"), (False, "float32")])
def test_default_dtype_is_bf16_only_on_a_cpu_that_computes_it(monkeypatch, native: bool,
                                                              expected: str) -> None:
    """bf16 halves the bytes a CPU decode step streams, but where the CPU emulates it, it is
    slower than fp32; an explicit dtype always wins."""
    import torch

    from expertrag.errors import InputError
    from expertrag.models import loading

    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: native)
    assert loading.resolve_dtype(None, "cpu") == getattr(torch, expected)
    assert loading.resolve_dtype("auto", "cpu") == getattr(torch, expected)
    assert loading.resolve_dtype("float32", "cpu") == torch.float32
    assert loading.resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(InputError, match="float64"):
        loading.resolve_dtype("float64", "cpu")
