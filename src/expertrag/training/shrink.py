"""Shrink a trained LoRA adapter to a lower rank by truncated SVD of each layer's update.

Training at rank 16 and shipping at rank 8 keeps most of what the adapter learned (the
update's leading singular directions) at half the size on disk. Each module's update
``scale * B @ A`` is factored again as ``B' @ A'`` with ``rank`` columns; the config gets
``r = lora_alpha = rank`` so the scaling is 1 and the served update is the truncated one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from expertrag.errors import InputError

_WEIGHTS = "adapter_model.safetensors"
_CONFIG = "adapter_config.json"


def shrink_adapter(folder: str | os.PathLike[str], rank: int) -> dict[str, float]:
    """Rewrite the plain-LoRA adapter in ``folder`` at ``rank`` (atomic per file); returns
    the mean and worst share of each update's Frobenius norm that the truncation keeps."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    config = json.loads((folder / _CONFIG).read_text(encoding="utf-8"))
    old_rank = int(config["r"])
    if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= old_rank:
        raise InputError(f"rank must be an integer in 1..{old_rank}, got {rank!r}")
    if config.get("use_dora") or config.get("use_rslora") or config.get("rank_pattern") \
            or config.get("alpha_pattern"):
        raise InputError("shrink_adapter takes plain LoRA adapters (no DoRA, rsLoRA or "
                         "per-module rank/alpha patterns)")
    scale = float(config["lora_alpha"]) / old_rank
    weights = load_file(str(folder / _WEIGHTS))
    out: dict[str, torch.Tensor] = {}
    kept: list[float] = []
    for key, a in weights.items():
        if ".lora_A." not in key:
            if ".lora_B." not in key:
                out[key] = a  # anything else (e.g. modules_to_save) is kept as it is
            continue
        b = weights[key.replace(".lora_A.", ".lora_B.")]
        delta = scale * (b.double() @ a.double())
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        root = s[:rank].sqrt()
        out[key.replace(".lora_A.", ".lora_B.")] = (u[:, :rank] * root).to(b.dtype).contiguous()
        out[key] = (root[:, None] * vh[:rank]).to(a.dtype).contiguous()
        total = float((s ** 2).sum())
        kept.append(float((s[:rank] ** 2).sum()) / total if total > 0 else 1.0)
    if not kept:
        raise InputError(f"{folder / _WEIGHTS} holds no LoRA A/B weights")
    config.update(r=rank, lora_alpha=rank)
    tmp = folder / (_WEIGHTS + ".tmp")
    save_file(out, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / _WEIGHTS)
    tmp = folder / (_CONFIG + ".tmp")
    tmp.write_text(json.dumps(config, indent=2), encoding="utf-8")
    os.replace(tmp, folder / _CONFIG)
    return {"mean_energy_kept": sum(kept) / len(kept), "min_energy_kept": min(kept)}
