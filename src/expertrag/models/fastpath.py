"""Serving fast paths that keep the model's numbers (their speed-ups, measured on 2 CPU cores
with SmolLM2-135M, are in benchmarks/RESULTS.md, "Model speed and dtype").

``install_lean_lora``: peft's ``lora.Linear.forward`` spends about as much time in Python
(argument checks, dict pops, dropout and cast calls, four module calls) as in the two small
LoRA matmuls. Serving one routed expert, the lean forward runs the very same tensor ops, in
the same order, and nothing else, so its output is bitwise peft's (on a bf16 base too, where
the adapters stay fp32 as peft serves them: for the few rows of a decode step an fp32 LoRA
product plus two casts measured cheaper than a bf16 one). Everything else (mixed
batches via ``adapter_names``, DoRA and other variants, training, merged layers, hooks) goes
to peft's own forward. A power-of-two ``scaling`` (alpha / r = 2 for the shipped experts) is
folded into ``lora_B`` once, which is exact, so the multiply goes too.

``install_fast_head``: the LM head is one ``[rows, 576] x [576, 49152]`` product per step. MKL
runs ``F.linear(x, W)`` for a few rows several times slower than ``(W @ x.T).T``, the same dot
products with the big matrix on the left. It is used for 2-64 rows: decode steps and
last-position scoring. The two can differ in the last bits of a logit (the kernels sum in a
different order), so a greedy pick could only change on a near-exact fp32 tie;
``test_fast_paths_keep_greedy_tokens`` pins the answers on the real model. One row keeps
``F.linear``. CPU only, inference only (no grad); ``EXPERTRAG_FAST_HEAD=0`` turns it off.
"""

from __future__ import annotations

import math
import os
import types
from typing import Any

ENV_FAST_HEAD = "EXPERTRAG_FAST_HEAD"
FAST_HEAD_MAX_ROWS = 64  # decode steps and last-position scoring: the measured range
_OFF = ("0", "false", "no", "off")


def switched_off(env: str) -> bool:
    """Whether the environment variable ``env`` turns a fast path off (0/false/no/off)."""
    return os.environ.get(env, "1").lower() in _OFF


def _peft_forward(layer: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    return type(layer).forward(layer, x, *args, **kwargs)


def _lean_lora_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """peft's vanilla-LoRA forward without its Python overhead (same ops, same order)."""
    import torch.nn.functional as F

    if args or kwargs or self.training or self.merged:
        return _peft_forward(self, x, *args, **kwargs)
    base = self.base_layer
    if self.disable_adapters:
        return F.linear(x, base.weight, base.bias)
    active = [a for a in self.active_adapters if a in self.lora_A]
    if any(a in self.lora_variant for a in active) or (
            not getattr(self, "cast_input_dtype_enabled", True)
            and any(self.lora_A[a].weight.dtype != x.dtype for a in active)):
        return _peft_forward(self, x)
    result = F.linear(x, base.weight, base.bias)
    result_dtype = result.dtype
    for name in active:
        scaling, lora_b = self.scaling[name], self.lora_B[name]
        lora_a = self.lora_A[name].weight
        if x.dtype != lora_a.dtype:  # fp32 adapters on a bf16 base: peft casts the input
            x = x.to(lora_a.dtype)
        hidden = F.linear(x, lora_a)
        if _power_of_two(scaling):  # B * 2^k is exact: (h B) * 2^k == h (B * 2^k), bit for bit
            weight, bias = _scaled_b(self, name, lora_b, scaling)
            result = result + F.linear(hidden, weight, bias)
        else:
            result = result + F.linear(hidden, lora_b.weight, lora_b.bias) * scaling
    return result.to(result_dtype)


def _power_of_two(value: float) -> bool:
    return value > 0 and math.frexp(value)[0] == 0.5


def _scaled_b(layer: Any, name: str, lora_b: Any, scaling: float) -> tuple[Any, Any]:
    """``lora_B`` pre-multiplied by its power-of-two scaling, cached until the weight
    changes (a reloaded adapter, an in-place edit)."""
    cache = layer.__dict__.setdefault("_lean_scaled_b", {})
    key = (id(lora_b.weight), lora_b.weight._version, scaling)
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        bias = None if lora_b.bias is None else lora_b.bias * scaling
        hit = cache[name] = (key, lora_b.weight * scaling, bias)
    return hit[1], hit[2]


def install_lean_lora(model: Any) -> int:
    """Give every plain ``peft`` LoRA ``Linear`` over a hook-free ``nn.Linear`` the lean
    forward (idempotent; new adapters are picked up, since it reads them per call).
    Returns how many layers have it."""
    import torch
    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is not LoraLinear:
            continue
        base = module.base_layer
        if type(base) is not torch.nn.Linear or base._forward_hooks or \
                base._forward_pre_hooks or module._forward_pre_hooks:
            continue
        if getattr(module.forward, "__func__", None) is not _lean_lora_forward:
            module.forward = types.MethodType(_lean_lora_forward, module)
        count += 1
    return count


def _fast_head_forward(self: Any, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    rows = x.numel() // x.shape[-1]
    if not 2 <= rows <= FAST_HEAD_MAX_ROWS or torch.is_grad_enabled() or x.device.type != "cpu" or \
            x.dtype != self.weight.dtype:
        return F.linear(x, self.weight, self.bias)
    flat = x.reshape(rows, x.shape[-1])
    out = (self.weight @ flat.t()).t().contiguous()
    if self.bias is not None:
        out = out + self.bias
    return out.reshape(*x.shape[:-1], out.shape[-1])


def install_fast_head(model: Any) -> bool:
    """Use the faster LM-head product on a CPU model's output embeddings (idempotent).
    Returns whether it is installed."""
    import torch

    if switched_off(ENV_FAST_HEAD):
        return False
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.weight.device.type != "cpu" or \
            head._forward_hooks or head._forward_pre_hooks:
        return False
    if getattr(head.forward, "__func__", None) is not _fast_head_forward:
        head.forward = types.MethodType(_fast_head_forward, head)
    return True


def remove_fast_paths(model: Any) -> None:
    """Back to the stock forwards (for comparisons and tests)."""
    for module in model.modules():
        if getattr(module.forward, "__func__", None) in (_lean_lora_forward,
                                                          _fast_head_forward):
            del module.forward
