"""Supervised LoRA / DoRA / QLoRA training of one expert adapter: a plain PyTorch loop.

- Loss on the answer tokens only: a row is tokenised as the rendered prompt (chat template,
  ``add_generation_prompt=True``, exactly what ``ExpertLLM`` sends at serve time) followed by
  the answer and EOS; every prompt token is labelled -100 (:func:`encode_row`).
- Batches are left-padded (explicit position ids), so answers sit at the end of every row and
  the LM head runs only on the last few positions (``logits_to_keep``): a sizeable saving on
  CPU with a 49k vocabulary. The loss is token-weighted over each gradient-accumulation window.
- AdamW with linear warm-up/decay, gradient clipping, fixed seed, optional gradient
  checkpointing, tqdm progress, evaluation loss (before and after) on a held-out split.
- Resumable: every ``save_every`` steps a checkpoint (adapter, optimizer, scheduler, step, RNG
  state) is written to a temp folder and moved into place with ``os.replace``; ``resume=True``
  continues from the newest one. A resumed run matches an uninterrupted one (same batches,
  same dropout draws).
- The result is a PEFT adapter folder (safetensors) plus ``expertrag_expert.json`` (base name
  and fingerprint, recipe, hyper-parameters, evaluation figures, timing) and a README model card.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from expertrag.errors import ExpertRAGError, InputError
from expertrag.evaluation.metrics import normalize_answer as _normalize
from expertrag.evaluation.metrics import token_f1
from expertrag.experts.card import CARD_FORMAT, ExpertCard
from expertrag.models.chat import render_prompt
from expertrag.models.loading import (
    LoadedModel,
    cpu_has_native_bf16,
    default_device,
    load_base_model,
    model_fingerprint,
)
from expertrag.training.config import TrainConfig, TrainReport
from expertrag.training.data import DataRowError, is_refusal, split_rows, strip_citations

logger = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
METADATA_FORMAT = CARD_FORMAT
_STEP_RE = re.compile(r"^step-(\d+)$")


class TrainingError(ExpertRAGError, RuntimeError):
    """A training run cannot start or continue (no CUDA for QLoRA, incompatible checkpoint)."""


# ------------------------------------------------------------------------------ encoding
def encode_row(tokenizer: Any, row: dict[str, Any], max_length: int | None = None,
               index: int = 0, end_id: int | None = None) -> dict[str, list[int]] | None:
    """Token ids and labels for one row: the rendered prompt (labels -100) then the answer and
    the end-of-turn token (supervised; ``end_id``, default ``end_of_turn_id(tokenizer)``:
    pass it when encoding many rows, it renders the template once). Returns None when longer
    than ``max_length``; raises DataRowError for a row with no messages or no answer."""
    messages, answer = row.get("messages"), row.get("answer")
    if not isinstance(messages, list) or not messages:
        raise DataRowError(index, "empty or missing 'messages'")
    if not isinstance(answer, str) or not answer.strip():
        raise DataRowError(index, "empty or missing 'answer'")
    prompt = render_prompt(tokenizer, messages, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    eos = end_of_turn_id(tokenizer) if end_id is None else end_id
    answer_ids = [*tokenizer(answer, add_special_tokens=False)["input_ids"], eos]
    ids = [*prompt_ids, *answer_ids]
    if max_length is not None and len(ids) > max_length:
        return None
    return {"input_ids": ids, "labels": [-100] * len(prompt_ids) + answer_ids}


def end_of_turn_id(tokenizer: Any) -> int:
    """The token the chat template puts right after an assistant answer (``<|im_end|>`` for
    SmolLM2), else the tokenizer's EOS. Answers are trained to end with it, whatever EOS the
    tokenizer reports: transformers 5.17 read SmolLM2's GGUF EOS as ``<|im_start|>`` where
    5.25 reads ``<|im_end|>``, and experts trained under 5.17 ended their answers with a token
    that 5.25 did not stop on."""
    found: int | None = None
    sentinel = "Zq7 sentinel answer"
    try:
        text = render_prompt(tokenizer, [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": sentinel}],
                             add_generation_prompt=False)
        cut = text.find(sentinel)
        if cut >= 0:
            after = tokenizer(text[cut + len(sentinel):], add_special_tokens=False)["input_ids"]
            special = set(getattr(tokenizer, "all_special_ids", []) or [])
            special |= set(getattr(tokenizer, "added_tokens_decoder", {}) or {})
            if after and after[0] in special:
                found = int(after[0])
    except Exception:  # a template that cannot render an assistant turn: fall back to EOS
        found = None
    if found is None:
        found = tokenizer.eos_token_id
    if found is None:
        raise InputError("the tokenizer has no EOS token; cannot mark the end of an answer")
    return int(found)


def _collate(items: Sequence[dict[str, list[int]]], pad_id: int, device: str) -> dict[str, Any]:
    """Left-padded tensors; ``keep`` = positions whose logits the loss needs."""
    import torch

    width = max(len(x["input_ids"]) for x in items)
    ids, mask, labels, pos = [], [], [], []
    for x in items:
        pad = width - len(x["input_ids"])
        ids.append([pad_id] * pad + x["input_ids"])
        mask.append([0] * pad + [1] * len(x["input_ids"]))
        labels.append([-100] * pad + x["labels"])
        pos.append([0] * pad + list(range(len(x["input_ids"]))))
    supervised = max(sum(1 for t in x["labels"] if t != -100) for x in items)
    as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
    return {"input_ids": as_tensor(ids), "attention_mask": as_tensor(mask),
            "position_ids": as_tensor(pos), "labels": as_tensor(labels),
            "keep": min(width, supervised + 1)}


def _forward(model: Any, batch: dict[str, Any], autocast: Any) -> tuple[Any, Any, Any]:
    """(summed token loss, token count, kept logits) for one batch."""
    import torch
    import torch.nn.functional as F

    keep = batch["keep"]
    kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids")}
    with autocast():
        try:
            out = model(**kwargs, use_cache=False, logits_to_keep=keep)
        except TypeError:  # a model without logits_to_keep: compute all, slice
            out = model(**kwargs, use_cache=False)
    logits = out.logits[:, -keep:, :].float()
    targets = batch["labels"][:, -keep + 1:] if keep > 1 else batch["labels"][:, :0]
    pred = logits[:, :-1, :]
    loss = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), targets.reshape(-1),
                           ignore_index=-100, reduction="sum")
    count = (targets != -100).sum()
    return loss, count, logits.detach() if not torch.is_grad_enabled() else None


def _epoch_batches(lengths: Sequence[int], batch_size: int, seed: int,
                   epoch: int) -> list[list[int]]:
    """Shuffled batches of similar length (little padding), the same for a seed and epoch."""
    rng = random.Random(f"{seed}-epoch-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    block = batch_size * 16
    batches: list[list[int]] = []
    for start in range(0, len(order), block):
        chunk = sorted(order[start:start + block], key=lambda i: (lengths[i], i))
        batches.extend(chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


# ------------------------------------------------------------------------------ metrics
def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """ROC AUC by the rank-sum formula (ties count half); nan with one class only."""
    pos = [s for s, y in zip(scores, labels, strict=True) if y]
    neg = [s for s, y in zip(scores, labels, strict=True) if not y]
    if not pos or not neg:
        return float("nan")
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def answer_metrics(predictions: Sequence[str], rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Grounded-QA figures for generated answers: exact match, token F1 and answer-contained on
    rows that hold the oracle (the best over ``meta["gold_answer"]`` and any
    ``meta["gold_aliases"]``); refusal accuracy on rows without it; false-refusal rate."""
    em, f1, contained, refused_ok, false_refusals = [], [], [], [], []
    for pred, row in zip(predictions, rows, strict=True):
        meta = row.get("meta", {})
        if meta.get("has_oracle", True):
            gold = meta.get("gold_answer") or strip_citations(row["answer"]).rstrip(".")
            golds = [gold, *(a for a in meta.get("gold_aliases") or [] if a.strip())]
            answer = strip_citations(pred).rstrip(".")
            em.append(max(float(_normalize(answer) == _normalize(g)) for g in golds))
            f1.append(max(token_f1(answer, g) for g in golds))
            contained.append(max(float(_normalize(g) in _normalize(pred)) for g in golds))
            false_refusals.append(float(is_refusal(pred)))
        else:
            refused_ok.append(float(is_refusal(pred)))
    mean = lambda v: sum(v) / len(v) if v else float("nan")  # noqa: E731
    return {"exact_match": mean(em), "f1": mean(f1), "answer_contained": mean(contained),
            "refusal_accuracy": mean(refused_ok), "false_refusal_rate": mean(false_refusals)}


# ------------------------------------------------------------------------------ the run
class _Run:
    """State and helpers of one training run (kept in one object for checkpointing)."""

    def __init__(self, loaded: LoadedModel, config: TrainConfig, recipe: dict[str, Any],
                 device: str) -> None:
        import torch

        self.loaded, self.config, self.recipe, self.device = loaded, config, recipe, device
        self.tokenizer = loaded.tokenizer
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        self.precision = resolve_precision(config.precision, device)
        kind = "cuda" if device.startswith("cuda") else "cpu"
        self.autocast = (
            (lambda: torch.autocast(kind, dtype=torch.bfloat16)) if self.precision == "bf16"
            else (lambda: torch.autocast(kind, enabled=False))
        )
        # held-out figures on CPU in fp32, the precision that serves the expert
        self.eval_autocast = self.autocast if kind == "cuda" else (
            lambda: torch.autocast("cpu", enabled=False))
        self.model: Any = None

    # -- model
    def wrap(self) -> None:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        cfg = self.config
        base = self.loaded.model
        if cfg.method == "qlora":
            base = prepare_model_for_kbit_training(
                base, use_gradient_checkpointing=cfg.gradient_checkpointing
            )
        elif cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
            base.enable_input_require_grads()
        lora = LoraConfig(
            r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules, use_dora=cfg.method == "dora",
            bias="none", task_type="CAUSAL_LM",
        )
        from expertrag.models.llm import peft_deprecation_quiet

        with peft_deprecation_quiet():  # peft reads a property transformers deprecated
            self.model = get_peft_model(base, lora)
        self.model.peft_config["default"].base_model_name_or_path = self.loaded.name
        if cfg.init_adapter:
            warm_start(self.model, cfg.init_adapter, cfg.r, cfg.alpha)

    # -- evaluation
    def evaluate(self, encoded: list[dict[str, list[int]]], rows: list[dict[str, Any]],
                 generate_rows: list[int]) -> tuple[float | None, dict[str, float]]:
        import torch

        if not encoded:
            return None, {}
        labels = tuple(self.recipe.get("eval_labels") or ())
        label_ids = [self.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in labels]
        self.model.eval()
        total, count = 0.0, 0
        scores: list[float] = []
        truth: list[int] = []
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
        with torch.no_grad():
            for start in range(0, len(order), self.config.eval_batch_size):
                idx = order[start:start + self.config.eval_batch_size]
                batch = _collate([encoded[i] for i in idx], self.pad_id, self.device)
                loss, n, logits = _forward(self.model, batch, self.eval_autocast)
                total, count = total + float(loss), count + int(n)
                if len(label_ids) == 2 and len(set(label_ids)) == 2:
                    for j, i in enumerate(idx):
                        n_ans = sum(1 for t in encoded[i]["labels"] if t != -100)
                        first = logits[j, batch["keep"] - 1 - n_ans, label_ids]
                        scores.append(float(torch.softmax(first, dim=-1)[0]))
                        truth.append(int(rows[i]["answer"].strip() == labels[0]))
        metrics: dict[str, float] = {}
        if scores:
            metrics["label_accuracy"] = sum(
                (s >= 0.5) == bool(y) for s, y in zip(scores, truth, strict=True)) / len(scores)
            metrics["label_auc"] = roc_auc(scores, truth)
        if generate_rows:
            preds = self.generate([rows[i] for i in generate_rows])
            metrics.update(answer_metrics(preds, [rows[i] for i in generate_rows]))
        self.model.train()
        return (total / count if count else None), metrics

    def generate(self, rows: list[dict[str, Any]]) -> list[str]:
        import torch

        out: list[str] = []
        tok = self.tokenizer
        stop_ids = sorted({end_of_turn_id(tok), tok.eos_token_id} - {None})
        for start in range(0, len(rows), self.config.eval_batch_size):
            chunk = rows[start:start + self.config.eval_batch_size]
            prompts = [render_prompt(tok, r["messages"]) for r in chunk]
            side = tok.padding_side
            tok.padding_side = "left"
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            tok.padding_side = side
            enc = enc.to(self.device)
            with torch.no_grad(), self.eval_autocast():
                ids = self.model.generate(
                    **enc, max_new_tokens=self.config.eval_max_new_tokens, do_sample=False,
                    pad_token_id=self.pad_id,
                    eos_token_id=stop_ids,
                )
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(t.strip() for t in tok.batch_decode(new, skip_special_tokens=True))
        return out

    # -- saving
    def save_adapter(self, folder: Path, dtype_name: str = "float32") -> None:
        import torch
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        dtype = getattr(torch, dtype_name)
        state = get_peft_model_state_dict(self.model)
        state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state.items()}
        save_file(state, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        peft_config = copy.deepcopy(self.model.peft_config["default"])
        peft_config.inference_mode = True
        peft_config.save_pretrained(str(folder))


def warm_start(model: Any, folder: str | os.PathLike[str], r: int, alpha: int) -> int:
    """Start ``model``'s fresh LoRA layers from the adapter in ``folder``: its update
    ``s0 * B0 @ A0`` (rank r0 <= r) goes into the first r0 ranks, scaled so that
    ``s * B @ A`` equals it; the other ranks keep their fresh init (B = 0, so they add
    nothing until trained). Returns the number of modules initialised. The adapter must
    cover exactly the model's LoRA modules."""
    import torch
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file() or not weights_path.is_file():
        raise TrainingError(f"init_adapter {folder} is not a PEFT adapter folder (needs "
                            "adapter_config.json and adapter_model.safetensors)")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("use_dora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        raise TrainingError("init_adapter must be a plain LoRA adapter (no DoRA, no patterns)")
    r0, s0 = int(config["r"]), float(config["lora_alpha"]) / int(config["r"])
    if r0 > r:
        raise TrainingError(f"init_adapter has rank {r0}, more than this run's r={r}")
    factor = math.sqrt(s0 / (alpha / r))
    weights = load_file(str(weights_path))
    layers = {name: module for name, module in model.named_modules()
              if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {})}
    done = set()
    for key, tensor in weights.items():
        if ".lora_A." not in key and ".lora_B." not in key:
            continue
        module_name = key.split(".lora_")[0]
        target = layers.get(module_name)
        if target is None:
            raise TrainingError(f"init_adapter weight {key} has no LoRA module in this model "
                                "(another base or other target modules?)")
        with torch.no_grad():
            if ".lora_A." in key:
                w = target.lora_A["default"].weight
                w[:r0].copy_(tensor.to(w.dtype) * factor)
            else:
                w = target.lora_B["default"].weight
                w[:, :r0].copy_(tensor.to(w.dtype) * factor)
        done.add(module_name)
    missing = set(layers) - done
    if missing:
        raise TrainingError(f"init_adapter {folder} covers {len(done)} of {len(layers)} LoRA "
                            f"modules (missing e.g. {sorted(missing)[0]})")
    return len(done)


def _data_hash(rows: Sequence[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps([row["messages"], row["answer"]], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def hardware(device: str) -> str:
    """A short description of the device a run used, for the model card."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"1x {torch.cuda.get_device_name(torch.device(device))}"
    try:
        caps = torch._C._cpu._get_cpu_capability()
        return f"{caps.get('cpu_name') or 'CPU'}, {torch.get_num_threads()} CPU threads"
    except (AttributeError, RuntimeError):
        return f"CPU, {torch.get_num_threads()} threads"


def resolve_precision(precision: str, device: str) -> str:
    """``TrainConfig.precision`` resolved for ``device``: "bf16" or "fp32"."""
    import torch

    if precision == "fp32":
        return "fp32"
    if device.startswith("cuda"):
        if precision == "bf16":
            if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
                raise InputError("precision 'bf16' asked for, but this GPU has no bf16 support")
            return "bf16"
        # "auto" on CUDA is fp32 (TF32 matmuls): bf16 autocast turned the loss into NaN
        # part-way through the grounded-qa and relevance recipes on an H200, where fp32
        # trains them in minutes (benchmarks/RESULTS.md)
        return "fp32"
    if precision == "bf16":
        return "bf16"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def _latest_checkpoint(root: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in root.glob("step-*")
             if (m := _STEP_RE.match(p.name)) and (p / "state.json").is_file()]
    return max(found)[1] if found else None


def _resolve_model(base_model: str | LoadedModel, config: TrainConfig, device: str) -> LoadedModel:
    import torch

    if config.method == "qlora":
        if not torch.cuda.is_available() or not device.startswith("cuda"):
            raise TrainingError(
                "QLoRA trains on a 4-bit base through bitsandbytes and needs a CUDA GPU; none "
                "is available here. Use method 'lora' (or 'dora') on CPU."
            )
        if isinstance(base_model, LoadedModel):
            return base_model
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return load_base_model(base_model, dtype=dtype, device=device, quantization="4bit")
    if isinstance(base_model, LoadedModel):
        return base_model
    # float32 weights everywhere (bf16 autocast on GPU): the recorded fingerprint then
    # matches the float32 base that serves the expert on CPU.
    return load_base_model(base_model, dtype=torch.float32, device=device)


def train_expert(
    base_model: str | LoadedModel,
    train_rows: Sequence[dict[str, Any]],
    eval_rows: Sequence[dict[str, Any]] | None = None,
    config: TrainConfig | None = None,
    recipe: dict[str, Any] | None = None,
    *,
    resume: bool = False,
    callback: Callable[[int, float], None] | None = None,
) -> TrainReport:
    """Train one LoRA/DoRA/QLoRA expert on ``train_rows`` and save it in ``config.output_dir``.

    ``base_model``: a model string for ``load_base_model`` or a LoadedModel (it is wrapped in
    place for the run and unwrapped afterwards). ``eval_rows``: None splits
    ``config.eval_fraction`` of the train groups off. ``recipe``: free-form description saved
    in the metadata; ``recipe["eval_labels"]`` (e.g. ("yes", "no")) adds label accuracy/AUC.
    ``resume``: continue from the newest checkpoint in ``output_dir/checkpoints``.
    ``callback(step, loss)`` runs after each optimizer step (and its checkpoint).
    """
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm.auto import tqdm
    from transformers import get_linear_schedule_with_warmup

    config = copy.deepcopy(config or TrainConfig()).validate()
    recipe = dict(recipe or {})
    device = config.device or default_device()
    started = time.perf_counter()
    train_rows = list(train_rows)
    if eval_rows is None:
        train_rows, held = split_rows(train_rows, config.eval_fraction, config.seed)
        eval_rows = held
    eval_rows = list(eval_rows)
    if not train_rows:
        raise InputError("no training rows")

    given = isinstance(base_model, LoadedModel)
    loaded = _resolve_model(base_model, config, device)
    fingerprint = model_fingerprint(loaded.model)
    run = _Run(loaded, config, recipe, device)

    tok = loaded.tokenizer
    end_id = end_of_turn_id(tok)
    encoded_all = [encode_row(tok, r, config.max_length, i, end_id)
                   for i, r in enumerate(train_rows)]
    skipped = sum(1 for e in encoded_all if e is None)
    keep_idx = [i for i, e in enumerate(encoded_all) if e is not None]
    train_enc = [encoded_all[i] for i in keep_idx]
    eval_pairs = [(r, encode_row(tok, r, config.max_length, i, end_id))
                  for i, r in enumerate(eval_rows)]
    skipped += sum(1 for _, e in eval_pairs if e is None)
    eval_kept = [r for r, e in eval_pairs if e is not None]
    eval_enc = [e for _, e in eval_pairs if e is not None]
    if skipped:
        logger.warning("%d rows are longer than max_length=%d tokens and were left out",
                       skipped, config.max_length)
    if not train_enc:
        raise InputError(f"every training row is longer than max_length={config.max_length}")
    gen_pick = list(range(len(eval_kept)))
    random.Random(f"{config.seed}-generate").shuffle(gen_pick)
    gen_pick = sorted(gen_pick[: config.eval_generate])

    lengths = [len(e["input_ids"]) for e in train_enc]
    micro_per_epoch = math.ceil(len(train_enc) / config.batch_size)
    steps_per_epoch = math.ceil(micro_per_epoch / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)

    out_dir = Path(config.output_dir)
    ck_root = out_dir / CHECKPOINTS
    signature = {"fingerprint": fingerprint, "data": _data_hash(train_rows),
                 "eval_data": _data_hash(eval_rows), "total_steps": total_steps,
                 "hyperparameters": config.hyperparameters()}

    torch.manual_seed(config.seed)
    random.seed(config.seed)
    try:
        run.wrap()
        model = run.model
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=config.learning_rate,
                                      weight_decay=config.weight_decay)
        scheduler = get_linear_schedule_with_warmup(
            optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps
        )
        step, epoch, micro_done = 0, 0, 0
        history: list[dict[str, float]] = []
        before: tuple[float | None, dict[str, float]] | None = None
        resumed_from = 0
        trained_tokens = 0
        prior_seconds = 0.0  # wall time of the runs a resumed checkpoint continues
        checkpoint = _latest_checkpoint(ck_root) if resume else None
        if checkpoint is not None:
            state = json.loads((checkpoint / "state.json").read_text(encoding="utf-8"))
            if state["signature"] != signature:
                diff = [k for k in signature if state["signature"].get(k) != signature[k]]
                raise TrainingError(
                    f"checkpoint {checkpoint} was written by a run with different {diff}; "
                    "run without --resume (or delete it) to start over"
                )
            weights = load_file(str(checkpoint / "adapter_model.safetensors"))
            set_peft_model_state_dict(model, weights)
            optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
            scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
            rng = torch.load(checkpoint / "rng.pt", weights_only=True)
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
            step, epoch, micro_done = state["step"], state["epoch"], state["micro_done"]
            history, trained_tokens = state["history"], state["trained_tokens"]
            before = (state["eval_loss_before"], state["metrics_before"])
            resumed_from = step
            prior_seconds = float(state.get("seconds", 0.0))
            logger.info("resuming from %s (step %d)", checkpoint, step)
        elif resume:
            logger.info("no checkpoint in %s: starting from scratch", ck_root)

        eval_started = time.perf_counter()
        if before is None:
            before = run.evaluate(eval_enc, eval_kept, gen_pick) if eval_enc else (None, {})
        eval_seconds = time.perf_counter() - eval_started

        def save_checkpoint() -> None:
            ck_root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ck_root))
            try:
                run.save_adapter(tmp)
                torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
                rng_state: dict[str, Any] = {"torch": torch.get_rng_state()}
                if torch.cuda.is_available():
                    rng_state["cuda"] = torch.cuda.get_rng_state_all()
                torch.save(rng_state, tmp / "rng.pt")
                (tmp / "state.json").write_text(json.dumps({
                    "step": step, "epoch": epoch, "micro_done": micro_done,
                    "history": history, "trained_tokens": trained_tokens,
                    "eval_loss_before": before[0], "metrics_before": before[1],
                    "signature": signature,
                    "seconds": prior_seconds + time.perf_counter() - started,
                }), encoding="utf-8")
                final = ck_root / f"step-{step:06d}"
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)  # atomic: an interruption never leaves half a checkpoint
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            for old in ck_root.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)

        model.train()
        bar = tqdm(total=total_steps, initial=step, disable=not config.progress,
                   desc=f"train {recipe.get('name', 'expert')}", unit="step")
        loop_started = time.perf_counter()
        steps_this_run = 0
        while step < total_steps:
            batches = _epoch_batches(lengths, config.batch_size, config.seed, epoch)
            windows = [batches[i:i + config.grad_accum]
                       for i in range(0, len(batches), config.grad_accum)]
            for window in windows[micro_done:]:
                if step >= total_steps:
                    break
                items = [[train_enc[i] for i in b] for b in window]
                n_tokens = sum(sum(1 for t in x["labels"] if t != -100) for b in items for x in b)
                window_loss = 0.0
                for b in items:
                    batch = _collate(b, run.pad_id, device)
                    loss, _, _ = _forward(model, batch, run.autocast)
                    (loss / n_tokens).backward()
                    window_loss += float(loss.detach())
                    trained_tokens += int(batch["attention_mask"].sum())
                if config.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                steps_this_run += 1
                micro_done += 1
                mean_loss = window_loss / n_tokens
                if not math.isfinite(mean_loss):
                    raise TrainingError(
                        f"loss became {mean_loss} at step {step} ({run.precision} "
                        "precision); a lower learning_rate or precision='fp32' may help")
                history.append({"step": step, "loss": mean_loss,
                                "lr": float(scheduler.get_last_lr()[0])})
                bar.update(1)
                bar.set_postfix(loss=f"{mean_loss:.3f}")
                if config.save_every and step % config.save_every == 0 and step < total_steps:
                    save_checkpoint()
                if callback is not None:
                    callback(step, mean_loss)
            else:
                epoch, micro_done = epoch + 1, 0
                if step < total_steps and config.save_every == 0:
                    save_checkpoint()
        bar.close()
        loop_seconds = time.perf_counter() - loop_started

        eval_started = time.perf_counter()
        eval_loss, metrics = run.evaluate(eval_enc, eval_kept, gen_pick) if eval_enc else (None, {})
        eval_seconds += time.perf_counter() - eval_started
        seconds = prior_seconds + time.perf_counter() - started
        tail = history[-max(1, min(len(history), 20)):]
        train_loss = sum(h["loss"] for h in tail) / len(tail) if tail else None
        report = TrainReport(
            output_dir=out_dir, steps=step, total_steps=total_steps, train_loss=train_loss,
            eval_loss=eval_loss, eval_loss_before=before[0], metrics=metrics,
            seconds=seconds,
            seconds_per_step=loop_seconds / steps_this_run if steps_this_run else 0.0,
            n_train=len(train_enc), n_eval=len(eval_enc), skipped_too_long=skipped,
            resumed_from_step=resumed_from, trained_tokens=trained_tokens, device=device,
            adapter_bytes=0, eval_seconds=eval_seconds, history=history,
        )
        _save_expert(run, report, fingerprint, before[1], recipe, len(gen_pick))
        if not config.keep_checkpoints:
            shutil.rmtree(ck_root, ignore_errors=True)
        return report
    finally:
        if given and run.model is not None:
            run.model.unload()  # give the caller back its base model, without LoRA layers
            loaded.model.eval()


def _save_expert(run: _Run, report: TrainReport, fingerprint: str,
                 metrics_before: dict[str, float], recipe: dict[str, Any],
                 n_generated: int) -> None:
    """Write the adapter, expertrag_expert.json and README.md into output_dir atomically
    (each file goes to a temp folder first, then os.replace)."""
    import peft
    import torch
    import transformers

    out_dir = report.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-final-", dir=out_dir))
    try:
        run.save_adapter(tmp, run.config.save_dtype)
        report.adapter_bytes = (tmp / "adapter_model.safetensors").stat().st_size
        public_recipe = {k: v for k, v in recipe.items() if not k.startswith("_")}
        metadata = {
            "format": METADATA_FORMAT,
            "name": recipe.get("name"),
            "task": recipe.get("task"),
            "base": {"name": run.loaded.name, "fingerprint": fingerprint,
                     "kind": run.loaded.source.kind},
            "recipe": {**public_recipe,
                       "sizes": {"train": report.n_train, "eval": report.n_eval,
                                 "skipped_too_long": report.skipped_too_long}},
            "hyperparameters": run.config.hyperparameters(),
            "evaluation": {"eval_loss": report.eval_loss,
                           "eval_loss_before": report.eval_loss_before,
                           "metrics": report.metrics, "metrics_before": metrics_before,
                           "n_eval": report.n_eval, "n_generated": n_generated},
            "training": {"steps": report.steps, "total_steps": report.total_steps,
                         "train_loss": report.train_loss, "seconds": round(report.seconds, 1),
                         "seconds_per_step": round(report.seconds_per_step, 3),
                         "eval_seconds": round(report.eval_seconds, 1),
                         "trained_tokens": report.trained_tokens, "device": report.device,
                         "precision": run.precision, "hardware": hardware(report.device),
                         "resumed_from_step": report.resumed_from_step,
                         "torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__,
                         "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "adapter_bytes": report.adapter_bytes,
        }
        ExpertCard.from_dict(metadata, metadata["name"]).write(tmp)
        (tmp / "README.md").write_text(model_card(metadata), encoding="utf-8")
        for item in tmp.iterdir():
            os.replace(item, out_dir / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return "n/a" if value is None else str(value)


def model_card(metadata: dict[str, Any]) -> str:
    """A short README.md for an expert: base, data and licences, figures, usage."""
    name = metadata.get("name") or "expert"
    recipe = metadata.get("recipe", {})
    ev, tr, hp = metadata["evaluation"], metadata["training"], metadata["hyperparameters"]
    lines = [
        f"# expertrag expert: {name}", "",
        recipe.get("description", "A LoRA expert adapter for expertrag."), "",
        f"- **Base model**: `{metadata['base']['name']}` (fingerprint "
        f"`{metadata['base']['fingerprint']}`; attaching it to another base is refused)",
        f"- **Method**: {hp['method']} r={hp['r']} alpha={hp['alpha']} dropout={hp['dropout']} "
        f"on {hp['target_modules']}; lr {hp['learning_rate']}, {tr['steps']} steps of "
        f"batch {hp['batch_size']}x{hp['grad_accum']}, seed {hp['seed']}",
        f"- **Training**: {tr['seconds']:.0f} s on {tr.get('hardware') or tr['device']}"
        f"{', bf16 autocast' if tr.get('precision') == 'bf16' else ''} "
        f"({tr['seconds_per_step']:.2f} s/step, {tr['trained_tokens']} tokens)",
        "", "## Data", "",
    ]
    for source in recipe.get("data", []):
        lines.append(f"- {source.get('name')}: {source.get('use', '')} "
                     f"— licence: {source.get('licence', 'see source')}")
    if recipe.get("licence"):
        lines += ["", f"Adapter licence: {recipe['licence']}."]
    sizes = recipe.get("sizes", {})
    lines += ["", f"Rows: {sizes.get('train')} train, {sizes.get('eval')} held-out eval "
              "(split by question). HotpotQA test.jsonl was never used.", "",
              "## Evaluation (held-out split of the training data)", ""]
    before = "base"
    if hp.get("init_adapter"):  # a warm start's "before" is the adapter it continued
        before = "before (warm start)"
        lines += ["Before: the base with the warm-start adapter this run continued "
                  f"(`{Path(str(hp['init_adapter'])).name}`).", ""]
    lines += [f"| figure | {before} | expert |", "|---|---|---|",
              f"| eval loss (answer tokens) | {_fmt(ev['eval_loss_before'])} | "
              f"{_fmt(ev['eval_loss'])} |"]
    for key in sorted(ev.get("metrics", {})):
        lines.append(f"| {key} | {_fmt(ev['metrics_before'].get(key))} | "
                     f"{_fmt(ev['metrics'][key])} |")
    lines += ["", "## Use", "", "```python",
              "from expertrag.experts import attach_shipped",
              "from expertrag.models import ExpertLLM", "",
              f"llm = ExpertLLM('{metadata['base']['name']}')",
              f"attach_shipped(llm, ['{name}'])",
              "```", ""]
    if recipe.get("usage"):
        lines += [recipe["usage"], ""]
    return "\n".join(lines)
