"""``finetune-strategies explain``: the plan of fit's strategy on fit's model, from fit's arguments and configs."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import PIL.Image
import pytest
import yaml
from conftest import QUIET_TRAINER
from ddp_helpers import subprocess_env
from image_helpers import BACKBONE, make_folder
from rich.console import Console

from finetune_strategies import ConfigurationError, Trainer
from finetune_strategies.cli.app import main
from finetune_strategies.image import ImageClassifier
from finetune_strategies.strategies.plan import SchedulePlan, describe_schedule

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TINY = [f"--model.backbone={BACKBONE}", "--model.pretrained=false"]
pytestmark = pytest.mark.usefixtures("in_tmp_path")


def rendered(plan: SchedulePlan, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width).print(plan.table())
    return out.getvalue()


def rows(out: str) -> list[list[str]]:
    """The body rows of a printed plan table, as cells."""
    return [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines() if line.startswith("│")]


def explain(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["explain", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_explain_prints_the_plan_of_fit_arguments(capsys):
    """The command of the issue: resnet18, gradual unfreezing with layer-wise lr decay, 12 epochs."""
    args = ["--model.backbone", "resnet18", "--model.pretrained", "false", "--model.num_classes", "10"]
    args += ["--strategy", "gradual_unfreeze", "--strategy.layer_lr_decay", "0.7", "--trainer.max_epochs", "12"]
    status, out, err = explain(capsys, *args)
    assert status == 0, err
    model = ImageClassifier(num_classes=10, backbone="resnet18", pretrained=False)
    plan = describe_schedule(model, "gradual_unfreeze", max_epochs=12, layer_lr_decay=0.7)
    assert out == rendered(plan, len(out.splitlines()[0]))
    table = rows(out)
    assert [row[0] for row in table] == [str(e) for e in range(12)]
    assert [row[1] for row in table[:3]] == ["", "backbone.layer4.1", "backbone.layer4.0"]
    assert table[9][1] == "backbone.stem"
    assert table[11][4].startswith("group 0: 0.001, backbone.layer4.1: 0.0001, backbone.layer4.0: 7e-05")
    assert table[11][4].endswith("backbone.stem: 5.76e-06")  # 1e-4 * 0.7**8: stem is the 9th layer from the top


def test_trainer_explain_plans_its_max_epochs():
    model = ImageClassifier(num_classes=2, backbone=BACKBONE, pretrained=False)
    plan = Trainer(max_epochs=3, **QUIET_TRAINER).explain(model, ("freeze_unfreeze", 1), layer_lr_decay=0.5)
    expected = describe_schedule(model, ("freeze_unfreeze", 1), max_epochs=3, layer_lr_decay=0.5)
    assert str(plan) == str(expected)
    assert len(plan.epochs) == 3
    with pytest.raises(ConfigurationError, match=r"create the Trainer with max_epochs=N"):
        Trainer(**QUIET_TRAINER).explain(model, "freeze")


def test_explain_uses_the_models_optimizer_scheduler_and_steps_per_epoch(capsys):
    schedule = ["--model.scheduler", "exponential", "--model.scheduler_kwargs", '{"gamma": 0.5, "interval": "step"}']
    args = [*TINY, "--model.num_classes=3", "--model.lr", "0.4", *schedule, "--steps_per_epoch", "2"]
    status, out, err = explain(
        capsys, *args, "--strategy=freeze_unfreeze", "--strategy.unfreeze_epoch=1", "--trainer.max_epochs=3"
    )
    assert status == 0, err
    assert [row[4] for row in rows(out)] == [
        "group 0: 0.4",
        "group 0: 0.1, backbone: 0.01",  # two steps of gamma 0.5, then the new group at group 0's lr / 10
        "group 0: 0.025, backbone: 0.0025",
    ]


def test_explain_reads_a_fit_config_without_its_data(capsys):
    """examples/configs/phases.yaml names data/tiny, which does not exist here: --model.num_classes suffices."""
    status, out, err = explain(capsys, "--config", str(EXAMPLES / "configs" / "phases.yaml"), "--model.num_classes=2")
    assert status == 0, err
    table = rows(out)
    assert [row[1] for row in table] == ["", "top", "", "rest", ""]
    assert table[1][4].startswith("group 0: 0.00271, top: 0.001")  # cosine over the config's 5 epochs


def test_explain_counts_the_classes_of_a_printed_fit_config_without_reading_images(tmp_path, capsys, monkeypatch):
    data = make_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=1)
    assert main(["fit", *TINY, f"--data.train_folder={data}", "--strategy=freeze", "--print_config"]) == 0
    config = tmp_path / "fit.yaml"
    config.write_text(capsys.readouterr().out)
    assert "ckpt_path" in yaml.safe_load(config.read_text())  # fit's own arguments are in it

    def no_images(*args, **kwargs):
        raise AssertionError("explain opened an image")

    monkeypatch.setattr(PIL.Image, "open", no_images)
    status, out, err = explain(capsys, "--config", str(config), "--trainer.max_epochs=2")
    assert status == 0, err
    assert "Freeze: what trains" in out
    assert rows(out)[0][3].endswith("/ 373.0k")  # test_resnet with a 3-class head (2 classes: 372.9k)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy=nope", "--trainer.max_epochs=2"], "Unknown fine-tuning strategy 'nope'."),
        (["--strategy=gradual_unfreez", "--trainer.max_epochs=2"], "Did you mean 'gradual_unfreeze'?"),
        (
            [
                "--strategy=phases",
                '--strategy.phases=[{"epoch": 1, "modules": ["backbone.layer9"]}]',
                "--trainer.max_epochs=2",
            ],
            "phases[0] (backbone.layer9): Module selector 'backbone.layer9': `backbone` has no child module 'layer9'.",
        ),
        (["--strategy=freeze"], "explain plans the trainer's max_epochs epochs, and it is None"),
        (["--trainer.max_epochs=2", "--steps_per_epoch=0"], "`steps_per_epoch` must be >= 1, got 0."),
        (["--trainer.max_epochs=2", "--strategy.layer_lr_decay=2"], "`layer_lr_decay` must be in (0, 1]"),
        (["--trainer.max_epochs=2", "--model.lr=-1"], "`lr` must be a finite number > 0, got -1.0."),
    ],
)
def test_bad_explain_arguments_are_one_line_usage_errors(capsys, args, message):
    status, out, err = explain(capsys, *TINY, "--model.num_classes=2", *args)
    assert status == 2
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1, err
    assert errors[0].startswith("finetune-strategies explain: error: ")
    assert message in errors[0]
    assert "Traceback" not in err
    assert out == ""


def test_explain_without_classes_says_what_to_set(capsys):
    status, _, err = explain(capsys, *TINY, "--trainer.max_epochs=2")
    assert status == 2
    assert "the number of classes is unknown. Set --data.train_folder" in err


def test_explain_is_listed_and_has_help(capsys):
    assert main(["--help"]) == 0
    assert "\n  explain" in capsys.readouterr().out
    assert main(["explain", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--steps_per_epoch", "--strategy", "--model.num_classes", "--ckpt_path"):
        assert flag in out


def test_the_console_script_explains_into_a_pipe(tmp_path):
    """The installed ``finetune-strategies`` script, its stdout a pipe: the table at its full width."""
    script = Path(sys.executable).with_name("finetune-strategies")
    args = [*TINY, "--model.num_classes=2", "--trainer.max_epochs=3", "--strategy", "freeze_unfreeze_deepspeed"]
    run = subprocess.run(
        [str(script), "explain", *args, "--strategy.unfreeze_epoch=1", "--strategy.layer_lr_decay=0.5"],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    table = rows(run.stdout)
    assert [row[1] for row in table] == ["", "backbone", ""]
    assert table[2][4] == (  # pre-registered at lr 0 (DeepSpeed), all started at epoch 1, none cut short
        "group 0: 0.001, backbone.stem: 6.25e-06, backbone.layer1: 1.25e-05, backbone.layer2: 2.5e-05, "
        "backbone.layer3: 5e-05, backbone.layer4: 0.0001"
    )
