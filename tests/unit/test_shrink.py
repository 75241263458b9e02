"""Post-training LoRA rank reduction (truncated SVD of each module's update)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import save_tiny_lora, tiny_llm

from expertrag.errors import InputError
from expertrag.training.shrink import shrink_adapter


def deltas(folder) -> dict[str, torch.Tensor]:
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    w = load_file(str(folder / "adapter_model.safetensors"))
    return {k: scale * w[k.replace("lora_A", "lora_B")].double() @ w[k].double()
            for k in w if "lora_A" in k}


def test_full_rank_keeps_every_update_and_lower_rank_is_the_best_approximation(tmp_path):
    llm = tiny_llm()
    folder = tmp_path / "a"
    save_tiny_lora(llm, str(folder))
    before = deltas(folder)
    assert shrink_adapter(folder, 4)["min_energy_kept"] == pytest.approx(1.0)
    for key, delta in deltas(folder).items():
        torch.testing.assert_close(delta, before[key], rtol=1e-5, atol=1e-6)

    kept = shrink_adapter(folder, 2)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (2, 2)
    assert 0.0 < kept["min_energy_kept"] <= kept["mean_energy_kept"] < 1.0
    for key, delta in deltas(folder).items():
        assert torch.linalg.matrix_rank(delta) == 2
        s = torch.linalg.svdvals(before[key])
        error = torch.linalg.matrix_norm(before[key] - delta)  # Eckart-Young: the tail
        assert error == pytest.approx(float(s[2:].square().sum().sqrt()), rel=1e-4)
    llm.add_expert("shrunk", folder)  # still attaches and serves
    assert llm.generate([{"role": "user", "content": "hi"}], expert="shrunk",
                        max_new_tokens=2).text is not None


def test_bad_rank_is_refused(tmp_path):
    folder = tmp_path / "a"
    save_tiny_lora(tiny_llm(), str(folder))
    for bad in (0, 5, 2.0, True):
        with pytest.raises(InputError, match="rank"):
            shrink_adapter(folder, bad)


def test_record_shrink_notes_the_rank_in_metadata_and_card(tmp_path):
    from expertrag.training.recipes import get_recipe, record_shrink

    folder = tmp_path / "a"
    save_tiny_lora(tiny_llm(), str(folder))
    (folder / "expertrag_expert.json").write_text(json.dumps({"name": "a"}))
    (folder / "README.md").write_text("# a\n")
    kept = record_shrink(folder, 2)
    meta = json.loads((folder / "expertrag_expert.json").read_text())
    assert meta["shrunk"] == kept and kept["rank"] == 2
    assert "Shipped at rank 2" in (folder / "README.md").read_text()
    assert get_recipe("relevance")["ship_rank"] == 8
