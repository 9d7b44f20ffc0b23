"""``finetune-strategies suggest`` on tiny image folders: the evidence, the YAML it writes, and fit reading it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from image_helpers import BACKBONE, cli_folders, model_data_args

from finetune_strategies.cli.app import expand_strategy_names, main

pytestmark = pytest.mark.usefixtures("in_tmp_path")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cli_folders(tmp_path_factory.mktemp("suggest"))


def common(data: Path) -> list[str]:
    return [
        *model_data_args(data),
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.logger=false",
    ]


def test_suggest_prints_the_evidence_and_writes_a_strategy_fit_reads(data: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "chosen.yaml"
    args = ["suggest", *common(data), "--budget_steps=10", "--strategy.train_bn=false", "--output", str(output)]
    assert main(args) == 0
    out = capsys.readouterr().out
    for name in ("freeze", "first", "middle", "last", "all", "backbone.layer4", "relative gradient norm"):
        assert name in out
    assert "2 steps per candidate (budget 10)" in " ".join(out.split())
    spec = yaml.safe_load(output.read_text())
    assert spec["train_bn"] is False
    assert spec["strategy"] in ("freeze", "no_freeze", "surgical")
    assert output.read_text().startswith("# suggest_layers: ")
    assert main(["fit", *common(data), "--trainer.max_epochs=1", "--strategy", str(output)]) == 0


def test_a_surgical_file_trains_at_the_heads_lr(tmp_path: Path) -> None:
    spec = tmp_path / "surgical.yaml"
    spec.write_text("strategy: surgical\nlayers: '0:2'\n")
    (expanded,) = [a for a in expand_strategy_names(["--strategy", str(spec)]) if a.startswith("{")]
    assert '"initial_denom_lr": 1.0' in expanded
    assert '"layers": "0:2"' in expanded
    flags = expand_strategy_names(["--strategy", "surgical", "--strategy.layers", "-1"])
    assert flags[2:] == ["--strategy.initial_denom_lr=1.0", "--strategy.layers", "-1"]


def test_suggest_refusals_are_usage_errors(data: Path, capsys) -> None:
    assert main(["suggest", *common(data), "--monitor", "val_nope"]) == 2
    assert "it logs ['val_acc', 'val_loss']" in capsys.readouterr().err
    assert main(["suggest", *common(data), "--budget_steps", "3"]) == 2
    assert "budget_steps=3 is less than one optimizer step" in capsys.readouterr().err
    assert main(["suggest", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--budget_steps" in out
    assert "--output" in out
    assert "--monitor" in out


def test_explain_shows_surgical_at_the_heads_lr(capsys) -> None:
    args = ["explain", f"--model.backbone={BACKBONE}", "--model.pretrained=false", "--model.num_classes=2"]
    args += ["--strategy", "surgical", "--strategy.layers", "0:2", "--trainer.max_epochs=1"]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "phase 0, backbone.stem, backbone.layer1: at epoch 0" in out
    assert "group 0: 0.001, backbone.stem, backbone.layer1: 0.001" in out
    assert main([*args[:-2], "1:3", "--trainer.max_epochs=1"]) == 0  # text, not YAML 1.1's base-60 number 63
    assert "phase 0, backbone.layer1, backbone.layer2: at epoch 0" in " ".join(capsys.readouterr().out.split())


def test_lp_ft_on_the_command_line_keeps_its_own_defaults() -> None:
    """The parser fills every option with the base class's default; lp_ft's own ones (a fully frozen backbone,
    BatchNorm in eval mode, cached features) come first, so it probes what it does from Python."""
    flags = expand_strategy_names(["--strategy", "lp_ft"])
    assert flags[2:] == ["--strategy.train_bn=false", "--strategy.bn_eval=true", "--strategy.cache_features=true"]
    deepspeed = expand_strategy_names(["--strategy", "lp_ft_deepspeed", "--strategy.probe_epochs=2"])
    assert "--strategy.cache_features=false" in deepspeed
    assert "--strategy.preregister_groups=true" in deepspeed
    assert deepspeed[-1] == "--strategy.probe_epochs=2"
