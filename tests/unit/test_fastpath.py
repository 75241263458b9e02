"""The serving fast paths keep the model's numbers: the lean LoRA forward is bitwise peft's
(routed expert, bare base, mixed batch, any scaling, a LoRA bias), the fast LM head matches
``F.linear`` to the last bits and keeps greedy tokens, and both step aside where they do
not apply (training, gradients, ``EXPERTRAG_FAST_HEAD=0``)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_models import tiny_llm

from expertrag.models import fastpath

PROMPTS = ["Hello there, expert", "Tell me a long story about the sea and a lighthouse",
           "Numbers: 1 2 3"]


def _save_lora(llm: Any, path: Path, seed: int, alpha: int, bias: bool = False) -> str:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from expertrag.models.llm import peft_deprecation_quiet

    base = AutoModelForCausalLM.from_config(llm.base_model.config)
    config = LoraConfig(r=4, lora_alpha=alpha, lora_bias=bias,
                        target_modules=["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"])
    with peft_deprecation_quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lora_bias over bias-free layers: merging only
        model = get_peft_model(base, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft reads 1-D lora_B biases as unsharded shards
        model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module")
def llm(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("fast")
    model = tiny_llm()
    # scalings 2.0 (folded into B), 1.5 (multiplied), 1.0 with a LoRA bias
    model.add_expert("two", _save_lora(model, folder / "two", 1, alpha=8))
    model.add_expert("odd", _save_lora(model, folder / "odd", 2, alpha=6))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lora_bias over bias-free layers: merging only
        model.add_expert("biased", _save_lora(model, folder / "biased", 3, alpha=4, bias=True))
    return model


def _logits(llm: Any, experts: list[str | None]) -> torch.Tensor:
    def run() -> torch.Tensor:
        enc = llm._encode(PROMPTS[:len(experts)])[0]
        extra = llm._prepare(experts)
        with torch.inference_mode():
            return llm._model(**enc, **extra).logits

    return llm._worker.run(run)


def test_lean_lora_is_installed_and_bitwise_peft(llm: Any) -> None:
    from peft.tuners.lora import Linear as LoraLinear

    layers = [m for m in llm._peft.modules() if type(m) is LoraLinear]
    assert layers and all(m.forward.__func__ is fastpath._lean_lora_forward for m in layers)
    cases: list[list[str | None]] = [[e] * 3 for e in ("two", "odd", "biased", None)]
    cases.append(["two", None, "odd"])  # mixed batch: peft's adapter_names path
    lean = [_logits(llm, c) for c in cases]
    fastpath.remove_fast_paths(llm._peft)
    try:
        stock = [_logits(llm, c) for c in cases]
    finally:
        fastpath.install_lean_lora(llm._peft)
        fastpath.install_fast_head(llm.base_model)
    for case, a, b in zip(cases, lean, stock, strict=True):
        assert torch.equal(a, b), case
    assert not torch.allclose(stock[0], stock[3])  # the expert really changes the output


def test_scaled_b_is_cached_until_the_weight_changes(llm: Any) -> None:
    from peft.tuners.lora import Linear as LoraLinear

    layer = next(m for m in llm._peft.modules() if type(m) is LoraLinear)
    lora_b = layer.lora_B["two"]
    first = fastpath._scaled_b(layer, "two", lora_b, 2.0)
    assert fastpath._scaled_b(layer, "two", lora_b, 2.0)[0] is first[0]
    assert torch.equal(first[0], lora_b.weight * 2.0)
    with torch.no_grad():
        lora_b.weight.add_(1.0)
    try:
        again = fastpath._scaled_b(layer, "two", lora_b, 2.0)
        assert again[0] is not first[0] and torch.equal(again[0], lora_b.weight * 2.0)
    finally:
        with torch.no_grad():
            lora_b.weight.sub_(1.0)


def test_lean_lora_steps_aside_when_training(llm: Any) -> None:
    from peft.tuners.lora import Linear as LoraLinear

    layer = next(m for m in llm._peft.modules() if type(m) is LoraLinear)
    calls = []
    original = type(layer).forward

    def spy(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    x = torch.randn(2, layer.in_features)
    try:
        type(layer).forward = spy  # type: ignore[method-assign]
        layer.train()
        layer(x)
        assert calls, "training must use peft's forward (dropout)"
        layer.eval()
        calls.clear()
        layer(x)
        assert not calls
    finally:
        type(layer).forward = original  # type: ignore[method-assign]
        layer.eval()


def test_fast_head_matches_linear_and_keeps_greedy_tokens(llm: Any) -> None:
    head = llm.base_model.get_output_embeddings()
    assert head.forward.__func__ is fastpath._fast_head_forward
    x = torch.randn(5, 1, head.in_features)
    with torch.inference_mode():
        fast = head(x)
        ref = torch.nn.functional.linear(x, head.weight, head.bias)
    assert fast.shape == ref.shape and fast.is_contiguous()
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
    convs = [[{"role": "user", "content": p}] for p in PROMPTS]
    with_fast = [r.text for r in llm.generate(convs, max_new_tokens=12)]
    fastpath.remove_fast_paths(llm.base_model)
    try:
        stock = [r.text for r in llm.generate(convs, max_new_tokens=12)]
    finally:
        fastpath.install_fast_head(llm.base_model)
    assert with_fast == stock


def test_fast_head_steps_aside_for_gradients_and_one_row(llm: Any, monkeypatch) -> None:
    head = llm.base_model.get_output_embeddings()
    seen = []
    real = torch.nn.functional.linear
    monkeypatch.setattr(torch.nn.functional, "linear",
                        lambda *a, **k: seen.append(1) or real(*a, **k))
    x = torch.randn(3, head.in_features, requires_grad=True)
    head(x).sum().backward()  # training: stock product, gradients flow
    assert seen and x.grad is not None
    seen.clear()
    with torch.inference_mode():
        head(torch.randn(1, head.in_features))
    assert seen  # one row: F.linear is as fast
    seen.clear()
    with torch.inference_mode():
        head(torch.randn(4, head.in_features))
    assert not seen


def test_fast_head_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setenv(fastpath.ENV_FAST_HEAD, "0")
    model = tiny_llm(seed=3)
    head = model.base_model.get_output_embeddings()
    assert not fastpath.install_fast_head(model.base_model)
    assert getattr(head.forward, "__func__", None) is not fastpath._fast_head_forward


def test_a_bf16_base_keeps_fp32_adapters_through_the_lean_forward(tmp_path: Path) -> None:
    """On a bf16 base peft keeps the adapters in fp32 and casts their input (cheaper than
    bf16's small products for decode rows on a CPU); the lean forward does the same and stays
    bitwise peft's, for a routed expert (bf16 out) and in a mixed batch."""
    from peft.tuners.lora import Linear as LoraLinear

    model = tiny_llm(seed=5)
    model.base_model.to(torch.bfloat16)
    model.add_expert("two", _save_lora(model, tmp_path / "two", 1, alpha=8))
    model.add_expert("odd", _save_lora(model, tmp_path / "odd", 2, alpha=6))
    layers = [m for m in model._peft.modules() if type(m) is LoraLinear]
    assert layers and all(m.lora_A["two"].weight.dtype == torch.float32 for m in layers)
    assert all(m.forward.__func__ is fastpath._lean_lora_forward for m in layers)
    calls = []
    stock_forward = LoraLinear.forward

    def counted(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return stock_forward(self, x, *args, **kwargs)

    cases: list[list[str | None]] = [["two"] * 3, ["odd"] * 3, ["two", None, "odd"]]
    try:
        LoraLinear.forward = counted
        lean = [_logits(model, c) for c in cases[:2]]
        assert not calls  # a routed expert never falls back to peft's forward
        lean.append(_logits(model, cases[2]))
    finally:
        LoraLinear.forward = stock_forward
    assert all(t.dtype == torch.bfloat16 for t in lean)
    fastpath.remove_fast_paths(model._peft)
    stock = [_logits(model, c) for c in cases]
    for case, a, b in zip(cases, lean, stock, strict=True):
        assert torch.equal(a, b), case
    assert not torch.equal(stock[0], _logits(model, [None] * 3))
