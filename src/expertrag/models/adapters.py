"""The LoRA experts attached to one in-process base model, and their serving state.

:func:`inspect_adapter` checks an adapter folder before peft touches it (files, LoRA only,
safetensors only, the card, the base it was trained for, tensor shapes).
:class:`AdapterState` holds what is attached and how the model serves it: the peft wrapper,
the expert each adapter layer is routed to, the expert kept merged into the base weights.
Its methods change peft's global state, so :class:`~expertrag.models.llm.ExpertLLM` calls
them on its model worker only.
"""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from expertrag.errors import ExpertError, UnknownExpertError
from expertrag.experts.card import ExpertCard
from expertrag.models.fastpath import install_lean_lora, switched_off

logger = logging.getLogger(__name__)

#: peft's name for "no adapter" inside a mixed batch
BASE_ADAPTER = "__base__"
#: tokens of work (prompt plus generated, all rows) from which a one-expert call runs on
#: merged weights (AdapterState.prepare): about where a merge (~0.13 s on 2 CPU cores) pays
#: for itself; benchmarks/probe_merge_tokens.py compares it with 2048 and with no merging
DEFAULT_MERGE_TOKENS = 512
#: 0 (or false / no / off) keeps every call unmerged, whatever ``merge_tokens`` says
ENV_MERGE = "EXPERTRAG_MERGE"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@contextmanager
def peft_deprecation_quiet() -> Iterator[None]:
    """Silence the one FutureWarning that wrapping a model in peft triggers with
    transformers >= 5: peft reads ``model.is_gradient_checkpointing``, a property transformers
    deprecated for ``is_activation_checkpointing``. peft's use is internal (nothing for a user
    to change), so the warning is noise on every first run; every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated",
                                category=FutureWarning)
        yield


def check_name(name: Any) -> None:
    """An expert name: letters, digits, '-', '_', '.' (and not peft's base marker)."""
    if not isinstance(name, str) or not NAME_RE.match(name) or name == BASE_ADAPTER:
        raise ExpertError(f"invalid expert name {name!r}: use letters, digits, '-', '_', '.'")


def inspect_adapter(name: str, folder: Path, base_model: Any, model_name: str,
                    fingerprint: Callable[[], str] | None = None) -> dict[str, Any]:
    """What attaching the adapter in ``folder`` needs, checked first: its path, peft config,
    card (``metadata``), whether it is DoRA, its refusal gate and beam width.

    Fails with ExpertError when files are missing, the adapter is not LoRA, it has only
    pickle weights, its card is damaged, or it was trained for another base: the card's
    recorded fingerprint differs from ``fingerprint()`` (skipped when None) or a tensor's
    shape does not fit the base's module.
    """
    if not folder.is_dir():
        raise ExpertError(f"expert {name!r}: adapter folder not found: {folder}")
    config_file = folder / "adapter_config.json"
    weights = folder / "adapter_model.safetensors"
    if not config_file.is_file():
        raise ExpertError(f"expert {name!r}: {folder} has no adapter_config.json")
    if not weights.is_file():
        hint = " (pickle-based adapter_model.bin is refused)" if (
            folder / "adapter_model.bin").exists() else ""
        raise ExpertError(f"expert {name!r}: {folder} has no adapter_model.safetensors{hint}")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ExpertError(f"expert {name!r}: unreadable adapter_config.json: {exc}") from exc
    if not isinstance(config, dict):
        raise ExpertError(f"expert {name!r}: adapter_config.json is not a JSON object")
    if config.get("peft_type") != "LORA":
        raise ExpertError(
            f"expert {name!r}: peft_type {config.get('peft_type')!r} is not supported (LORA)"
        )
    card = ExpertCard.read(folder, name)
    recorded = card.fingerprint
    if fingerprint is not None and recorded and recorded != fingerprint():
        raise ExpertError(
            f"expert {name!r} was trained for base {(card.base or {}).get('name')!r} "
            f"(fingerprint {recorded}); this model is {model_name!r} "
            f"(fingerprint {fingerprint()})"
        )
    _check_shapes(name, weights, base_model, model_name)
    return {"path": str(folder), "config": config, "metadata": card.to_dict(),
            "dora": bool(config.get("use_dora")), "gate": card.gate,
            "num_beams": card.num_beams}


def _check_shapes(name: str, weights: Path, base_model: Any, model_name: str) -> None:
    """Every LoRA tensor targets a module the base has, with matching features."""
    from safetensors import safe_open

    modules = dict(base_model.named_modules())
    try:
        with safe_open(str(weights), framework="pt") as handle:
            for key in handle.keys():
                if ".lora_A" not in key and ".lora_B" not in key:
                    continue
                module_name = key.split(".lora_")[0].removeprefix("base_model.model.")
                module = modules.get(module_name)
                if module is None:
                    raise ExpertError(
                        f"expert {name!r} targets module {module_name!r}, which base "
                        f"{model_name!r} does not have: it was trained for another base"
                    )
                shape = handle.get_slice(key).get_shape()
                in_f = getattr(module, "in_features", None)
                out_f = getattr(module, "out_features", None)
                ok = (shape[-1] == in_f) if ".lora_A" in key else (shape[0] == out_f)
                if in_f is not None and out_f is not None and not ok:
                    raise ExpertError(
                        f"expert {name!r}: weight {key} has shape {list(shape)} but module "
                        f"{module_name} is {in_f}->{out_f}: it was trained for another base"
                    )
    except ExpertError:
        raise
    except Exception as exc:  # safetensors' SafetensorError, OSError: a damaged file
        raise ExpertError(
            f"expert {name!r}: {weights} cannot be read ({type(exc).__name__}: {exc}): "
            "the file is damaged or truncated; copy it again or retrain the expert"
        ) from exc


class AdapterState:
    """The attached experts (``infos``: name -> :func:`inspect_adapter`'s record) and how
    the model serves them. Not thread-safe: every method runs on the model worker."""

    def __init__(self, merge_tokens: int | None = DEFAULT_MERGE_TOKENS) -> None:
        self.infos: dict[str, dict[str, Any]] = {}
        self.peft: Any = None  # the peft wrapper, once an expert is attached
        self.serving: str | None = None  # expert kept merged into the base weights
        self.merged: str | None = None  # expert merged right now
        #: a one-expert call with at least this many tokens of work runs on merged weights
        #: (None: only ``serving`` is ever merged); see :meth:`prepare`
        self.merge_tokens = merge_tokens
        self._tuner_layers: list[Any] | None = None  # peft's adapter layers, for routing
        #: (base layer, its own weight tensor) for each layer the merged expert changed;
        #: unmerging puts these tensors back, so the base weights come back bit for bit
        self._pristine: list[tuple[Any, Any]] = []
        self._peft_merged = False  # merged by peft itself (DoRA and other variants)
        self._swappable: dict[str, bool] = {}  # _swap_mergeable's answers, per expert

    def model(self, base: Any) -> Any:
        """What runs a forward pass: the peft wrapper, or ``base`` when no expert is on."""
        return self.peft if self.peft is not None else base

    def check(self, name: str | None) -> None:
        """An UnknownExpertError naming the attached experts, unless ``name`` is one (or
        None, the bare base)."""
        if name is not None and name not in self.infos:
            known = ", ".join(self.infos) or "none attached"
            raise UnknownExpertError(f"unknown expert {name!r} (attached: {known})")

    def attach(self, base: Any, name: str, info: dict[str, Any]) -> None:
        """Load the adapter into peft under ``name`` (the caller records ``info``)."""
        from peft import PeftModel

        self.unmerge()
        # On a bf16/fp16 base peft keeps the adapters in fp32 and casts their input; the
        # lean forward (fastpath) keeps peft's numbers at a lower cost per decode step.
        serve = {"is_trainable": False}
        if self.peft is None:
            with peft_deprecation_quiet():
                self.peft = PeftModel.from_pretrained(base, info["path"], adapter_name=name,
                                                      **serve)
        else:
            self.route(self.peft.active_adapter)  # a clean, enabled state to load into
            self.peft.load_adapter(info["path"], adapter_name=name, **serve)
        self.peft.eval()
        # served, never trained here: frozen weights make switching a pointer change
        self.peft.requires_grad_(False)
        self._tuner_layers = None
        self._swappable.clear()
        install_lean_lora(self.peft)

    def detach(self, name: str) -> Any:
        """Remove an expert's weights; returns the unwrapped base model when it was the
        last one (peft is dropped), else None."""
        self.unmerge()
        self._tuner_layers = None
        self._swappable.clear()
        if self.serving == name:
            self.serving = None
        base = None
        if len(self.infos) == 1:
            base, self.peft = self.peft.unload(), None
        else:
            self.peft.delete_adapter(name)
        del self.infos[name]
        return base

    def unmerge(self) -> None:
        """Back to the base weights (exactly: the swapped-in merged tensors are dropped)."""
        if self.merged is None:
            return
        if self._peft_merged:
            self.peft.base_model.unmerge_adapter()
        for base, weight in self._pristine:
            base.weight.data = weight
        self._pristine, self._peft_merged, self.merged = [], False, None

    def _swap_mergeable(self, expert: str) -> bool:
        """Whether ``expert`` merges by swapping weights: every adapter layer is peft's
        plain LoRA ``Linear`` over an ``nn.Linear``, with no DoRA, bias or extra modules."""
        import torch
        from peft.tuners.lora import Linear as LoraLinear

        if expert not in self._swappable:
            info = self.infos[expert]
            config = info["config"]
            self._layers()
            self._swappable[expert] = not (
                info["dora"] or config.get("modules_to_save") or config.get("lora_bias")
            ) and all(type(layer) is LoraLinear and type(layer.base_layer) is torch.nn.Linear
                      for layer in self._tuner_layers or [] if expert in layer.lora_A)
        return self._swappable[expert]

    def _merge(self, expert: str) -> None:
        """Serve ``expert`` from merged weights. Plain LoRA: each adapted layer's weight is
        replaced by a new tensor ``W + delta`` (summed in fp32, stored in the weight's
        dtype) and every adapter layer is switched off; :meth:`unmerge` puts ``W`` back.
        Other adapters go through peft's merge."""
        import torch

        self.unmerge()
        if not self._swap_mergeable(expert):
            self.route(expert)
            self.peft.base_model.merge_adapter([expert])
            self.merged, self._peft_merged = expert, True
            return
        with torch.no_grad():
            for layer in self._tuner_layers or []:
                if expert not in layer.lora_A:
                    continue
                base = layer.base_layer
                weight = base.weight.data
                delta = layer.get_delta_weight(expert).to(torch.float32)
                base.weight.data = (weight.to(torch.float32) + delta).to(weight.dtype)
                self._pristine.append((base, weight))
        self.merged = expert
        self.route(None)  # the merged weights alone: no adapter product on top

    def _layers(self) -> None:
        if self._tuner_layers is None:
            from peft.tuners.tuners_utils import BaseTunerLayer

            self._tuner_layers = [m for m in self.peft.modules()
                                  if isinstance(m, BaseTunerLayer)]

    def route(self, expert: str | None) -> None:
        """Make every adapter layer serve ``expert`` (None: the bare base).

        peft's ``set_adapter`` / ``enable_adapter_layers`` walk the whole model and toggle
        ``requires_grad`` on every adapter weight. Attached experts are frozen, so serving
        only needs each cached layer's active adapter and enabled flag set, which is far
        cheaper per call. Adapters with extra trainable modules (modules_to_save) take
        peft's own path. ``test_routing_matches_peft_switching`` pins this to peft.
        """
        if any(info["config"].get("modules_to_save") for info in self.infos.values()):
            if expert is None:
                self.peft.base_model.disable_adapter_layers()
            else:
                self.peft.base_model.enable_adapter_layers()
                self.peft.set_adapter(expert, inference_mode=True)
            return
        self._layers()
        for layer in self._tuner_layers or []:
            layer._disable_adapters = expert is None
            if expert is not None:
                layer._active_adapter = [expert]
        if expert is not None:
            self.peft.base_model.active_adapter = expert
            self.peft.active_adapter = expert

    def prepare(self, experts: list[str | None], work: int = 0) -> dict[str, Any]:
        """Put the model in the state for this set of experts; returns the extra forward /
        ``generate`` kwargs. ``work``: the call's tokens (prompt tokens plus tokens to
        generate, over all its rows).

        One expert for the whole batch is served from merged weights when it is the expert
        kept merged (``serving``) or the call has at least ``merge_tokens`` tokens of work:
        merging costs about one forward pass over a few hundred tokens, and merged weights
        then skip the two adapter products of every adapted layer (prompt processing ~1.6x
        faster on a bf16 CPU; figures in benchmarks/RESULTS.md). A smaller call is routed:
        the adapter layers serve its expert unmerged, as peft does. The bare base is served
        from the base weights, restored exactly. A batch that mixes experts goes through
        peft's ``adapter_names`` (per-row selection inside each layer; DoRA experts, which
        peft cannot mix, were already split into groups by :meth:`groups`).
        """
        if self.peft is None:
            return {}
        wanted = set(experts)
        if len(wanted) == 1:
            (expert,) = wanted
            # only plain LoRA merges on its own: peft's merge into other layers (4-bit
            # weights, DoRA) is lossy or slow to undo, so only an explicit merge() takes it
            merge = expert is not None and (
                expert == self.serving
                or (self.merge_tokens is not None and work >= self.merge_tokens
                    and not switched_off(ENV_MERGE)
                    and self._swap_mergeable(expert)))
            if merge:
                if self.merged != expert:
                    self._merge(expert)
                return {}
            self.unmerge()
            self.route(expert)
            return {}
        self.unmerge()
        self.route(next(e for e in experts if e is not None))  # layers on for per-row names
        return {"adapter_names": [BASE_ADAPTER if e is None else e for e in experts]}

    def groups(self, experts: list[str | None]) -> list[list[int]]:
        """One group for the whole batch unless it mixes experts that peft cannot serve in
        one mixed batch (DoRA); then one group per expert."""
        mixed = len(set(experts)) > 1
        if mixed and any(self.infos[e]["dora"] for e in set(experts) if e is not None):
            order: dict[str | None, list[int]] = {}
            for i, e in enumerate(experts):
                order.setdefault(e, []).append(i)
            return list(order.values())
        return [list(range(len(experts)))]

    def beams_for(self, expert: str | None, opts: Any) -> int:
        """The beam width for one row: the call's, else its expert's for a plain greedy
        call (its card's ``decoding``), else 1."""
        if opts.num_beams is not None:
            return opts.num_beams
        if expert is None or opts.temperature > 0 or opts.constrained or opts.logprobs:
            return 1
        return int(self.infos[expert].get("num_beams") or 1)

    def gate(self, expert: str | None) -> tuple[str, float] | None:
        """The refusal gate an expert ships (None for the base or an expert without)."""
        return self.infos[expert].get("gate") if expert is not None else None
