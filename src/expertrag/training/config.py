"""Training configuration (one dataclass) and the report a run returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from expertrag.config import ConfigMixin
from expertrag.errors import ConfigKeyError, InputError

DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                          "down_proj"]
METHODS = ("lora", "dora", "qlora")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig(ConfigMixin):
    """Hyper-parameters of one expert training run; saved and loaded as JSON
    (:class:`~expertrag.config.ConfigMixin`).

    ``method``: "lora", "dora" (weight-decomposed LoRA) or "qlora" (LoRA on a 4-bit nf4 base
    through bitsandbytes; needs CUDA). ``target_modules``: module names or "all-linear".
    ``max_steps`` caps optimizer steps (the schedule then spans the capped run). ``save_every``
    writes a resumable checkpoint every N optimizer steps (0: only at the end of each epoch).
    ``eval_generate`` greedily generates that many eval rows for answer metrics (grounded QA).
    ``save_dtype`` is the dtype of the shipped adapter weights ("float16" halves the size).
    ``init_adapter`` (a PEFT LoRA folder for the same base and target modules, rank <= ``r``)
    starts training from that adapter's update instead of zero: a warm start, e.g. a
    multi-task critic from the relevance expert.
    ``precision`` of the training forward and backward passes: "auto" runs them under bf16
    autocast on a CPU that computes bf16 natively (AVX512-BF16 or AMX, where it is the faster
    path) and in fp32 elsewhere, CUDA included (bf16 autocast there diverged to NaN; see
    benchmarks/RESULTS.md for the step times); "bf16" and "fp32" force one. Weights,
    optimizer state and the held-out evaluation stay fp32 on CPU, so the recorded figures
    are those of the fp32 model that serves the expert.
    """

    method: str = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    learning_rate: float = 2e-4
    epochs: int = 1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 1024
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 42
    eval_fraction: float = 0.1
    eval_batch_size: int = 8
    eval_generate: int = 0
    eval_max_new_tokens: int = 32
    gradient_checkpointing: bool = False
    save_every: int = 50
    max_steps: int | None = None
    output_dir: str = "experts/expert"
    device: str | None = None  # None: cuda when present, else cpu
    save_dtype: str = "float32"
    keep_checkpoints: bool = False  # keep output_dir/checkpoints after a finished run
    init_adapter: str | None = None
    precision: str = "auto"
    progress: bool = True

    def validate(self) -> TrainConfig:
        if self.method not in METHODS:
            raise InputError(f"method must be one of {METHODS}, got {self.method!r}")
        for name in ("r", "alpha", "epochs", "batch_size", "grad_accum", "max_length",
                     "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{name} must be a positive integer, got {value!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError(f"max_steps must be a positive integer, got {self.max_steps!r}")
        if self.save_every < 0:
            raise InputError(f"save_every must be >= 0, got {self.save_every!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be within [0, 1), got {self.dropout!r}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise InputError(f"warmup_ratio must be within [0, 1], got {self.warmup_ratio!r}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise InputError(f"eval_fraction must be within [0, 1), got {self.eval_fraction!r}")
        if self.learning_rate <= 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if self.save_dtype not in ("float32", "float16", "bfloat16"):
            raise InputError(
                f"save_dtype must be float32, float16 or bfloat16, got {self.save_dtype!r}"
            )
        if self.precision not in PRECISIONS:
            raise InputError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if isinstance(self.target_modules, str) and self.target_modules != "all-linear":
            raise InputError("target_modules must be a list of module names or 'all-linear'")
        return self

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that shape the adapter (recorded in expertrag_expert.json)."""
        skip = {"output_dir", "progress", "keep_checkpoints", "device"}
        return {k: v for k, v in asdict(self).items() if k not in skip}

    def replace(self, **changes: Any) -> TrainConfig:
        data = asdict(self)
        unknown = sorted(set(changes) - set(data))
        if unknown:
            raise ConfigKeyError(f"unknown TrainConfig fields: {unknown}", unknown)
        data.update(changes)
        return TrainConfig(**data).validate()


@dataclass
class TrainReport:
    """What a training run did and measured."""

    output_dir: Path
    steps: int
    total_steps: int
    train_loss: float | None
    eval_loss: float | None
    eval_loss_before: float | None
    metrics: dict[str, float]
    seconds: float
    seconds_per_step: float
    n_train: int
    n_eval: int
    skipped_too_long: int
    resumed_from_step: int
    trained_tokens: int
    device: str
    adapter_bytes: int
    eval_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> str:
        ev = f"{self.eval_loss:.4f}" if self.eval_loss is not None else "n/a"
        before = f" (before {self.eval_loss_before:.4f})" if self.eval_loss_before else ""
        tl = f"{self.train_loss:.4f}" if self.train_loss is not None else "n/a"
        extra = ", ".join(f"{k} {v:.3f}" for k, v in sorted(self.metrics.items()))
        return (
            f"trained {self.steps}/{self.total_steps} steps on {self.n_train} rows "
            f"({self.device}, {self.seconds:.0f}s, {self.seconds_per_step:.2f}s/step, "
            f"{self.eval_seconds:.0f}s evaluating); "
            f"train loss {tl}, eval loss {ev}{before}"
            + (f"; {extra}" if extra else "")
            + f"; adapter {self.adapter_bytes / 1e6:.1f} MB at {self.output_dir}"
        )
