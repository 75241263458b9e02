"""The trainer on a tiny random model: loss drops, adapters round-trip, resume is exact."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest
from tiny_models import tiny_llm

from expertrag.errors import ExpertError, UnknownExpertError
from expertrag.models.llm import EXPERT_METADATA
from expertrag.training import (
    RELEVANCE_LABELS,
    DataNotFoundError,
    DataRowError,
    TrainConfig,
    TrainingError,
    train_expert,
)
from expertrag.training.trainer import answer_metrics, roc_auc, token_f1

MODULES = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def qa_rows(n: int = 16) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Question {i}: what jumps over the dog?"}],
         "answer": "The quick brown fox [1].", "meta": {"group": str(i)}}
        for i in range(n)
    ]


def label_rows(n: int = 16) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": f"Is {i} even? Answer yes or no."}],
         "answer": RELEVANCE_LABELS[i % 2], "meta": {"group": str(i)}}
        for i in range(n)
    ]


def config(tmp_path: Path, **kw) -> TrainConfig:
    base = {"output_dir": str(tmp_path / "expert"), "r": 4, "alpha": 8, "dropout": 0.1,
            "target_modules": MODULES, "learning_rate": 5e-3, "batch_size": 4,
            "epochs": 2, "eval_fraction": 0.25, "save_every": 0, "progress": False,
            "precision": "fp32"}  # the same numbers on every CPU; bf16 has its own test
    base.update(kw)
    return TrainConfig(**base)


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_tiny_model_trains_and_its_loss_drops(tmp_path):
    llm = tiny_llm()
    report = train_expert(llm.loaded, qa_rows(), None, config(tmp_path, epochs=4),
                          {"name": "tiny-qa"})
    assert report.steps == report.total_steps == 12  # 12 train rows / 4 per batch * 4 epochs
    assert report.n_train == 12 and report.n_eval == 4
    losses = [h["loss"] for h in report.history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.1
    assert report.eval_loss < report.eval_loss_before
    assert not (tmp_path / "expert" / "checkpoints").exists()  # cleaned after a finished run
    # the caller's base model is handed back without LoRA layers
    assert not any("lora" in name for name, _ in llm.base_model.named_modules())


def test_bf16_autocast_trains_and_records_fp32_figures(tmp_path, monkeypatch):
    import torch

    from expertrag.training import trainer

    seen: list[torch.dtype] = []
    real = trainer._forward

    def spy(model, batch, autocast):
        with autocast():
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                        else torch.float32)
        return real(model, batch, autocast)

    monkeypatch.setattr(trainer, "_forward", spy)
    llm = tiny_llm()
    report = train_expert(llm.loaded, qa_rows(), None,
                          config(tmp_path, epochs=4, precision="bf16"), {"name": "tiny-qa"})
    losses = [h["loss"] for h in report.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0] - 0.1
    # training steps under bf16 autocast; the held-out evaluation (before and after) in fp32
    assert seen.count(torch.bfloat16) == report.steps
    assert torch.float32 in seen
    meta = json.loads((tmp_path / "expert" / EXPERT_METADATA).read_text())
    assert meta["training"]["precision"] == "bf16"
    assert meta["hyperparameters"]["precision"] == "bf16"
    assert "bf16 autocast" in (tmp_path / "expert" / "README.md").read_text()
    # the adapter is stored in fp32 (save_dtype), not in the autocast dtype
    assert all(t.dtype == torch.float32 for t in adapter_tensors(tmp_path / "expert").values())


def test_precision_resolution(monkeypatch):
    import torch

    from expertrag.errors import InputError
    from expertrag.training import trainer

    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: True)
    assert trainer.resolve_precision("auto", "cpu") == "bf16"
    assert trainer.resolve_precision("fp32", "cpu") == "fp32"
    monkeypatch.setattr(trainer, "cpu_has_native_bf16", lambda: False)
    assert trainer.resolve_precision("auto", "cpu") == "fp32"  # emulated bf16 is slower
    assert trainer.resolve_precision("bf16", "cpu") == "bf16"  # forced: the user's choice
    # CUDA: "auto" is fp32 (bf16 autocast diverged there); "bf16" needs a GPU that has it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert trainer.resolve_precision("auto", "cuda") == "fp32"
    with pytest.raises(InputError, match="no bf16 support"):
        trainer.resolve_precision("bf16", "cuda:0")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert trainer.resolve_precision("auto", "cuda") == "fp32"
    assert trainer.resolve_precision("bf16", "cuda") == "bf16"
    with pytest.raises(InputError, match="precision"):
        TrainConfig(precision="fp8").validate()


def test_adapter_round_trips_and_is_refused_on_another_base(tmp_path):
    llm = tiny_llm()
    cfg = config(tmp_path, epochs=1, save_dtype="float16")
    train_expert(llm.loaded, label_rows(), None, cfg,
                 {"name": "tiny-relevance", "eval_labels": list(RELEVANCE_LABELS),
                  "data": [{"name": "toy", "licence": "CC0", "use": "tests"}],
                  "licence": "CC0 for the toy weights"})
    folder = Path(cfg.output_dir)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                     EXPERT_METADATA]
    meta = json.loads((folder / EXPERT_METADATA).read_text())
    assert meta["base"] == {"name": "tiny", "fingerprint": llm.fingerprint, "kind": "dir"}
    assert meta["hyperparameters"]["r"] == 4
    assert meta["recipe"]["sizes"] == {"train": 12, "eval": 4, "skipped_too_long": 0}
    assert set(meta["evaluation"]["metrics"]) == {"label_accuracy", "label_auc"}
    assert meta["training"]["steps"] == 3
    card = (folder / "README.md").read_text()
    assert "toy: tests — licence: CC0" in card
    assert "Adapter licence: CC0 for the toy weights." in card
    assert {str(t.dtype) for t in adapter_tensors(folder).values()} == {"torch.float16"}

    llm.add_expert("relevance", folder)  # fingerprint check passes
    probs = llm.label_probabilities([label_rows(1)[0]["messages"]], labels=RELEVANCE_LABELS,
                                    expert="relevance")
    assert abs(sum(probs[0].values()) - 1.0) < 1e-5
    other = tiny_llm(name="other", seed=1)
    with pytest.raises(ExpertError, match="trained for base"):
        other.add_expert("relevance", folder)


def test_resume_continues_exactly(tmp_path):
    cfg_a = config(tmp_path / "a", epochs=2, save_every=2)
    full = train_expert(tiny_llm().loaded, qa_rows(), None, cfg_a, {"name": "a"})

    cfg_b = config(tmp_path / "b", epochs=2, save_every=2)

    def interrupt(step: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_expert(tiny_llm().loaded, qa_rows(), None, cfg_b, {"name": "a"},
                     callback=interrupt)
    checkpoints = sorted(p.name for p in (Path(cfg_b.output_dir) / "checkpoints").iterdir())
    assert checkpoints == ["step-000004"]  # only the newest, no temp folder left behind
    state = json.loads((Path(cfg_b.output_dir) / "checkpoints" / "step-000004" / "state.json")
                       .read_text(encoding="utf-8"))
    resumed = train_expert(tiny_llm().loaded, qa_rows(), None, cfg_b, {"name": "a"},
                           resume=True)
    assert resumed.resumed_from_step == 4
    assert resumed.seconds > state["seconds"] > 0  # wall time adds up across the runs
    assert resumed.steps == full.steps == 6
    assert [h["loss"] for h in resumed.history] == pytest.approx(
        [h["loss"] for h in full.history], rel=1e-5)
    a, b = adapter_tensors(Path(cfg_a.output_dir)), adapter_tensors(Path(cfg_b.output_dir))
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max() < 1e-5, key


def test_resume_refuses_a_checkpoint_from_other_data(tmp_path):
    cfg = config(tmp_path, epochs=2, save_every=1, keep_checkpoints=True)
    train_expert(tiny_llm().loaded, qa_rows(), None, cfg, {"name": "a"})
    other = qa_rows()
    other[0]["answer"] = "Something else."
    with pytest.raises(TrainingError, match="different"):
        train_expert(tiny_llm().loaded, other, None, cfg, {"name": "a"}, resume=True)


def test_dora_and_gradient_checkpointing(tmp_path):
    llm = tiny_llm()
    cfg = config(tmp_path, method="dora", epochs=1, gradient_checkpointing=True,
                 max_steps=2, eval_fraction=0.0)
    report = train_expert(llm.loaded, qa_rows(8), None, cfg)
    assert report.steps == 2 and report.eval_loss is None
    saved = json.loads((Path(cfg.output_dir) / "adapter_config.json").read_text())
    assert saved["use_dora"] is True
    llm.add_expert("dora", cfg.output_dir)


def test_qlora_is_refused_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(TrainingError, match="CUDA"):
        train_expert("unused", qa_rows(), None, config(tmp_path, method="qlora"))


def test_broken_training_row_is_reported(tmp_path):
    rows = qa_rows()
    rows[5]["answer"] = ""
    with pytest.raises(DataRowError, match="row 5"):
        train_expert(tiny_llm().loaded, rows, [], config(tmp_path))


def test_bad_config_is_refused():
    from expertrag.errors import InputError

    with pytest.raises(InputError, match="method"):
        TrainConfig(method="full").validate()
    with pytest.raises(InputError, match="target_modules"):
        TrainConfig(target_modules="attention").validate()


def test_metric_helpers():
    assert roc_auc([0.9, 0.8, 0.1], [1, 1, 0]) == 1.0
    assert roc_auc([0.1, 0.9], [1, 0]) == 0.0
    assert token_f1("The Paris", "paris") == 1.0
    rows = [{"answer": "Paris [1].", "meta": {"has_oracle": True, "gold_answer": "Paris"}},
            {"answer": "I don't know.", "meta": {"has_oracle": False}}]
    m = answer_metrics(["Paris [2].", "I don't know"], rows)
    assert m["exact_match"] == 1.0 and m["refusal_accuracy"] == 1.0
    assert m["false_refusal_rate"] == 0.0


# ------------------------------------------------------------------------------ shipping
def test_shipped_experts_and_attach(tmp_path, monkeypatch):
    from expertrag import experts

    assert isinstance(experts.shipped_experts(), dict)
    llm = tiny_llm()
    root = tmp_path / "experts"
    cfg = config(tmp_path, output_dir=str(root / "toy"), epochs=1, max_steps=1,
                 eval_fraction=0.0)
    train_expert(llm.loaded, qa_rows(4), None, cfg)
    (root / "incomplete").mkdir()
    monkeypatch.setattr(experts, "experts_dir", lambda: root)
    assert experts.shipped_experts() == {"toy": root / "toy"}
    assert experts.attach_shipped(llm) == ["toy"]
    assert llm.experts == ["toy"]
    assert experts.attach_shipped(llm, "toy") == ["toy"]  # already attached: no error
    with pytest.raises(UnknownExpertError, match="nope"):
        experts.attach_shipped(llm, ["nope"])


def test_train_cli_parses_and_reports_missing_data(tmp_path, capsys):
    from expertrag.training.cli import add_train_subcommand

    parser = argparse.ArgumentParser(prog="expertrag")
    add_train_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--recipe", "relevance", "--data-dir",
                              str(tmp_path / "missing"), "--max-steps", "3", "--resume"])
    assert args.recipe == "relevance" and args.max_steps == 3 and args.resume
    with pytest.raises(DataNotFoundError, match="missing"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--recipe", "nope"])
    shutil.rmtree(tmp_path, ignore_errors=True)


def _card_metadata(init_adapter: str | None) -> dict:
    return {"name": "toy", "base": {"name": "tiny", "fingerprint": "f"},
            "recipe": {"description": "A toy.", "sizes": {"train": 4, "eval": 2}},
            "hyperparameters": {"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0,
                                "target_modules": ["q_proj"], "learning_rate": 1e-3,
                                "batch_size": 2, "grad_accum": 1, "seed": 1,
                                "init_adapter": init_adapter},
            "training": {"steps": 2, "seconds": 1.0, "device": "cpu", "seconds_per_step": 0.5,
                         "trained_tokens": 10},
            "evaluation": {"eval_loss_before": 0.6, "eval_loss": 0.5,
                           "metrics": {"f1": 0.3}, "metrics_before": {"f1": 0.2}}}


def test_the_card_names_a_warm_starts_before_column():
    from expertrag.training.trainer import model_card

    cold = model_card(_card_metadata(None))
    assert "| figure | base | expert |" in cold and "warm start" not in cold
    warm = model_card(_card_metadata("/cache/git-adapters/a64f9d229d97-grounded-qa"))
    assert "| figure | before (warm start) | expert |" in warm
    assert "`a64f9d229d97-grounded-qa`" in warm
    assert "| f1 | 0.2000 | 0.3000 |" in warm
