"""Fuzzing every input of the ``finetune-strategies`` command and of transfer configs with hypothesis.

Each input either runs or is refused with one of our errors: exit status 2 and one
``finetune-strategies <subcommand>: error: ...`` report for a usage error, never a traceback.
Most examples take the parse-only paths (``--print_config``, config validation) or ``explain``
(which builds the model and strategy but trains nothing); nothing trains inside a hypothesis loop.

The short form runs a fixed set of examples (``derandomize``). The full form, on demand:
``FUZZ_EXAMPLES=500 pytest tests/cli/test_cli_fuzz.py`` draws that many random examples per test.
"""

from __future__ import annotations

import copy
import io
import itertools
import json
import os
import string
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from image_helpers import BACKBONE, make_folder
from jsonargparse import get_loader
from transfer_tools import BASE_TRAINER, TinyRegressor

from finetune_strategies.cli.app import main
from finetune_strategies.errors import TransferConfigError
from finetune_strategies.strategies.registry import available_strategies
from finetune_strategies.transfer import TransferConfig

FULL = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def fuzz(examples: int) -> Callable[[Any], Any]:
    """``examples`` fixed examples in CI, ``FUZZ_EXAMPLES`` random ones on demand."""
    return settings(
        max_examples=FULL or examples,
        derandomize=not FULL,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate] if not FULL else list(Phase),  # CI: no slow shrinking
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


@pytest.fixture(scope="module", autouse=True)
def workdir(tmp_path_factory):
    """One working directory for the module (hypothesis reuses a test's fixtures across its examples)."""
    root = tmp_path_factory.mktemp("fuzz")
    make_folder(root / "train", per_class=1)
    previous = os.getcwd()
    os.chdir(root)
    yield root
    os.chdir(previous)


def run(*args: str, entry: Callable[[list[str]], int] = main) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = entry(list(args))
    return status, out.getvalue(), err.getvalue()


def assert_usage_error(status: int, err: str, command: str = "fit", prog: str = "finetune-strategies") -> None:
    assert status == 2, err
    assert f"{prog} {command}: error: " in err, err
    assert "Traceback" not in err


def write(name: str, content: str | bytes) -> Path:
    path = Path(name).resolve()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


# ---------------------------------------------------------------------------------- values
TEXT = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=12)
"""Free text, YAML's special words and characters included."""
WORDS = st.sampled_from(["null", "true", "no", "~", "1e3", "0x10", "[1, 2]", "{a: 1}", "- x", "a: b", "'q'", "#c"])
POSITIVE = st.floats(min_value=1e-8, max_value=1e3, allow_nan=False, allow_infinity=False)
FRACTION = st.floats(min_value=0.01, max_value=1.0)


def flag(key: str, value: Any) -> str:
    return f"--{key}={json.dumps(value) if not isinstance(value, str) else value}"


PHASE = st.fixed_dictionaries(
    {"epoch": st.integers(0, 30)},
    optional={
        "modules": st.lists(
            st.one_of(st.sampled_from(["backbone.layer4", "backbone.*", "re:layer[34]"]), TEXT), min_size=1, max_size=3
        ),
        "lr": POSITIVE,
        "layer_lr_decay": FRACTION,
        "name": st.one_of(TEXT, WORDS).filter(bool),
    },
)


@st.composite
def strategy_flags(draw: st.DrawFn) -> list[str]:
    name = draw(st.sampled_from(["", "freeze", "freeze_unfreeze", "unfreeze_milestones", "gradual_unfreeze", "phases"]))
    if not name:
        return []
    flags = ["--strategy", draw(st.sampled_from([name, f"{name}_deepspeed"]))]
    if name == "freeze_unfreeze":
        flags.append(flag("strategy.unfreeze_epoch", draw(st.integers(0, 99))))
    elif name == "unfreeze_milestones":
        first = draw(st.integers(0, 20))
        flags += [flag("strategy.milestones", [first, first + draw(st.integers(1, 20))])]
        flags += [flag("strategy.num_layers", draw(st.integers(1, 9)))]
    elif name == "gradual_unfreeze":
        for option in ("start_epoch", "every", "layers_per_step"):
            if draw(st.booleans()):
                flags.append(flag(f"strategy.{option}", draw(st.integers(1, 9))))
    elif name == "phases":
        phases = sorted(draw(st.lists(PHASE, min_size=1, max_size=3)), key=lambda p: p["epoch"])
        flags.append(flag("strategy.phases", phases))
    for option, values in (
        ("train_bn", st.booleans()),
        ("bn_eval", st.booleans()),
        ("layer_lr_decay", FRACTION),
        ("lr", POSITIVE),
        ("layer_unit", st.sampled_from(["blocks", "param_modules", "flash_leaves"])),
        ("attr_names", st.one_of(st.just("backbone"), st.lists(st.sampled_from(["backbone", "head"]), min_size=1))),
    ):
        if draw(st.booleans()):
            flags.append(flag(f"strategy.{option}", draw(values)))
    return flags


@st.composite
def fit_flags(draw: st.DrawFn) -> list[str]:
    """Flags of every group, of the right types; free text where the type is a string."""
    options: list[tuple[str, st.SearchStrategy[Any]]] = [
        ("model.backbone", st.one_of(st.just(BACKBONE), TEXT.filter(bool), WORDS)),
        ("model.pretrained", st.one_of(st.booleans(), TEXT.filter(bool))),
        ("model.lr", POSITIVE),
        ("model.optimizer", st.sampled_from(["adam", "adamw", "sgd", "torch.optim.RMSprop"])),
        ("model.scheduler", st.sampled_from(["null", "cosine", "step", "onecycle", "ExponentialLR"])),
        ("model.head_dropout", st.floats(0, 0.9)),
        ("model.image_size", st.integers(1, 512)),
        ("model.optimizer_kwargs", st.dictionaries(st.sampled_from(["momentum", "eps"]), POSITIVE, max_size=2)),
        ("data.train_folder", st.one_of(TEXT.filter(bool), WORDS)),
        ("data.val_folder", st.one_of(TEXT.filter(bool), WORDS)),
        ("data.batch_size", st.integers(1, 512)),
        ("data.val_split", st.floats(0, 0.99)),
        ("data.augment", st.booleans()),
        ("trainer.max_epochs", st.integers(1, 1000)),
        ("trainer.precision", st.sampled_from(["32-true", "bf16-mixed", "16-mixed", "64"])),
        ("trainer.gradient_clip_val", st.floats(0, 10)),
        ("trainer.accumulate_grad_batches", st.integers(1, 16)),
        ("seed_everything", st.integers(0, 2**31 - 1)),
    ]
    chosen = draw(st.lists(st.sampled_from(options), unique_by=lambda o: o[0], max_size=len(options)))
    return [flag(key, draw(values)) for key, values in chosen] + draw(strategy_flags())


# ---------------------------------------------------------------------------------- fit --print_config
@fuzz(12)
@given(flags=fit_flags())
def test_print_config_round_trips(flags: list[str]) -> None:
    """Print a config, feed it back with --config and print again: the same YAML. Text that YAML reads
    as another type (a list, a mapping) may be refused, as a usage error."""
    status, printed, err = run("fit", *flags, "--print_config")
    if status != 0:
        assert_usage_error(status, err)
        return
    config = write("printed.yaml", printed)
    status, again, err = run("fit", "--config", str(config), "--print_config")
    assert status == 0, err
    assert again == printed


@pytest.mark.parametrize(
    "flags",
    [
        [
            "--model.backbone=1e3",
            "--data.train_folder=0E0",
        ],  # jsonargparse reads 1e3 as a float, PyYAML did not quote it
        ["--data.val_folder=a\x85b", "--data.train_folder=c\u2028d\u2029e"],  # came back as spaces
        ["--strategy=phases", '--strategy.phases=[{"epoch": 1, "name": "2e5"}, {"epoch": 2, "name": " x\ny "}]'],
    ],
)
def test_print_config_round_trips_strings_yaml_reads_otherwise(flags: list[str]) -> None:
    """Found by the fuzzing above: fixed by :mod:`finetune_strategies.cli.yaml_dump`."""
    test_print_config_round_trips.hypothesis.inner_test(flags)  # type: ignore[attr-defined]


TYPED = [  # (flag, the type jsonargparse checks)
    ("model.lr", float),
    ("model.head_dropout", float),
    ("model.image_size", int),
    ("data.batch_size", int),
    ("data.val_split", float),
    ("data.augment", bool),
    ("trainer.max_epochs", int),
    ("strategy.unfreeze_epoch", int),
    ("strategy.train_bn", bool),
    ("strategy.layer_lr_decay", float),
]


def _reads_as(value: str, kind: type) -> bool:
    """Whether jsonargparse reads ``value`` as a ``kind`` (or null)."""
    try:
        loaded = get_loader("yaml")(value)
    except yaml.YAMLError:
        return False
    if loaded is None:
        return True  # null: several of these are optional
    if kind is bool:
        return isinstance(loaded, bool)
    if isinstance(loaded, str):  # argparse-style conversions jsonargparse also accepts
        try:
            kind(loaded)
        except ValueError:
            return False
        return True
    return (
        isinstance(loaded, (int, float)) and not isinstance(loaded, bool) and (kind is float or loaded == int(loaded))
    )


@fuzz(15)
@given(option=st.sampled_from(TYPED), value=st.one_of(TEXT, WORDS, st.floats().map(str)))
def test_values_of_the_wrong_type_are_usage_errors(option: tuple[str, type], value: str) -> None:
    key, kind = option
    assume(value.strip() and not _reads_as(value, kind))
    strategy = ["--strategy", "freeze_unfreeze"] if key.startswith("strategy.") else []
    status, _, err = run("fit", *strategy, f"--{key}={value}", "--print_config")
    assert_usage_error(status, err)
    assert key.split(".")[-1] in err


# ---------------------------------------------------------------------------------- names and options
IDENTIFIER = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


@fuzz(10)
@given(name=IDENTIFIER)
def test_unknown_strategies_are_usage_errors(name: str) -> None:
    assume(name not in available_strategies() and name not in ("null", "None"))
    status, out, err = run("fit", f"--strategy={name}", "--print_config")
    if status == 0:  # a class name jsonargparse resolves, e.g. BackboneFinetuning
        assert name in out
        return
    assert_usage_error(status, err)
    assert f"Unknown fine-tuning strategy {name!r}." in err


@fuzz(10)
@given(group=st.sampled_from(["model", "data", "trainer", "strategy"]), option=IDENTIFIER)
def test_unknown_options_are_usage_errors(group: str, option: str) -> None:
    status, _, err = run("fit", "--strategy=gradual_unfreeze", f"--{group}.{option}=1", "--print_config")
    if status == 0:
        return  # an option that exists
    assert_usage_error(status, err)
    assert option in err


# ---------------------------------------------------------------------------------- values the classes refuse
BAD_VALUES = st.one_of(
    st.tuples(st.just("model.lr"), st.floats(max_value=0) | st.just(float("nan")) | st.just(float("inf"))),
    st.tuples(st.just("model.weight_decay"), st.floats(max_value=-1e-9)),
    st.tuples(st.just("model.head_dropout"), st.floats(min_value=1) | st.floats(max_value=-1e-9)),
    st.tuples(st.just("model.num_classes"), st.integers(max_value=1)),
    st.tuples(st.just("model.image_size"), st.integers(max_value=0)),
    st.tuples(st.just("model.optimizer"), st.sampled_from(["adamm", "torch.optim.Nope", "os.path"])),
    st.tuples(st.just("model.scheduler"), st.sampled_from(["cosin", "torch.optim.lr_scheduler.Nope"])),
    st.tuples(st.just("model.backbone"), st.sampled_from(["resnt18", "torchvision:nope", "vit_nope"])),
    st.tuples(st.just("strategy.layer_lr_decay"), st.floats(min_value=1.0001) | st.floats(max_value=0)),
    st.tuples(st.just("strategy.lr"), st.floats(max_value=0)),
    st.tuples(st.just("strategy.initial_denom_lr"), st.floats(max_value=0)),
    st.tuples(st.just("strategy.attr_names"), st.sampled_from(["neck", "backbone.nope", "['backbone', 'nope']"])),
    st.tuples(st.just("trainer.max_epochs"), st.integers(-5, 0)),
    st.tuples(st.just("steps_per_epoch"), st.integers(-5, 0)),
)
BAD_PHASES = st.one_of(
    st.just([]),
    st.lists(PHASE, min_size=2, max_size=3).filter(
        lambda p: any(a["epoch"] > b["epoch"] for a, b in itertools.pairwise(p))
    ),
    st.lists(
        st.fixed_dictionaries({"epoch": st.integers(0, 3), "modules": st.lists(TEXT, min_size=1, max_size=2)}),
        min_size=1,
        max_size=2,
    ).filter(lambda phases: any(m not in ("*", "re:.*") for p in phases for m in p["modules"])),
    st.lists(
        st.dictionaries(st.sampled_from(["epoch", "module", "lrs", "modules"]), st.integers(0, 3), min_size=1),
        min_size=1,
        max_size=2,
    ).filter(lambda phases: any(set(p) - {"epoch", "modules"} or "epoch" not in p or "modules" in p for p in phases)),
    st.lists(st.fixed_dictionaries({"epoch": st.integers(max_value=-1)}), min_size=1, max_size=1),
)


@fuzz(15)
@given(bad=BAD_VALUES)
def test_values_the_model_strategy_or_trainer_refuse_are_usage_errors(bad: tuple[str, Any]) -> None:
    """``explain`` builds the model and strategy and plans, but trains nothing."""
    key, value = bad
    args = [f"--model.backbone={BACKBONE}", "--model.pretrained=false", "--model.num_classes=2"]
    args += ["--trainer.max_epochs=2", "--strategy=freeze_unfreeze", flag(key, value)]
    status, out, err = run("explain", *args)
    assert_usage_error(status, err, "explain")
    assert out == ""


@fuzz(10)
@given(phases=BAD_PHASES)
def test_bad_phases_are_usage_errors(phases: list[dict[str, Any]]) -> None:
    args = [f"--model.backbone={BACKBONE}", "--model.pretrained=false", "--model.num_classes=2"]
    args += ["--trainer.max_epochs=3", "--strategy=phases", flag("strategy.phases", phases)]
    status, _, err = run("explain", *args)
    assert_usage_error(status, err, "explain")
    assert "phases" in err


BAD_DATA = st.one_of(
    st.tuples(st.just("data.batch_size"), st.integers(max_value=0)),
    st.tuples(st.just("data.eval_batch_size"), st.integers(max_value=0)),
    st.tuples(st.just("data.num_workers"), st.integers(max_value=-1)),
    st.tuples(st.just("data.val_split"), st.floats(min_value=1) | st.floats(max_value=-1e-9)),
    st.tuples(st.just("data.on_bad_image"), st.sampled_from(["ignore", "raise"])),
    st.tuples(st.just("data.train_folder"), st.from_regex(r"missing/[a-z]{1,8}", fullmatch=True)),
    st.tuples(st.just("data.val_folder"), st.from_regex(r"nowhere[0-9]{0,3}", fullmatch=True)),
)


@fuzz(10)
@given(bad=BAD_DATA)
def test_bad_data_settings_and_missing_folders_stop_fit_before_training(bad: tuple[str, Any], workdir: Path) -> None:
    key, value = bad
    args = [
        "fit",
        f"--model.backbone={BACKBONE}",
        "--model.pretrained=false",
        f"--data.train_folder={workdir / 'train'}",
    ]
    status, _, err = run(*args, "--trainer.max_epochs=1", flag(key, value))
    assert_usage_error(status, err)
    assert not list(workdir.rglob("*.ckpt"))


TRAINER_SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "val_check_interval": st.one_of(st.integers(-1, 2000), st.floats(-1, 2)),
        "check_val_every_n_epoch": st.one_of(st.none(), st.integers(-2, 5)),
        "accumulate_grad_batches": st.integers(-2, 5),
        "gradient_clip_val": st.floats(-1, 2),
        "gradient_clip_algorithm": st.sampled_from(["norm", "value", "nope"]),
        "precision": st.sampled_from(["32-true", "bf16-mixed", "16-mixed", "64-true", "17", "transformer-engine"]),
        "log_every_n_steps": st.integers(-1, 5),
        "num_sanity_val_steps": st.integers(-2, 3),
        "min_epochs": st.integers(-1, 3),
        "max_steps": st.integers(-2, 5),
        "accelerator": st.sampled_from(["cpu", "auto", "gpu", "tpu", "nope"]),
        "devices": st.sampled_from([1, "1", "auto", 0, "nope"]),  # never more than one: no process launch
        "strategy": st.sampled_from(["auto", "single_device", "nope", "deepspeed_stage_3"]),
        "deterministic": st.sampled_from([True, False, "warn", "nope"]),
        "detect_anomaly": st.booleans(),
    },
)


@fuzz(8)
@given(settings_=TRAINER_SETTINGS)
def test_trainer_settings_run_or_are_usage_errors(settings_: dict[str, Any], workdir: Path) -> None:
    """A fit with no training batch (``limit_train_batches=0``) builds and sets up everything, trains nothing."""
    args = [
        "fit",
        f"--model.backbone={BACKBONE}",
        "--model.pretrained=false",
        f"--data.train_folder={workdir / 'train'}",
    ]
    args += ["--trainer.max_epochs=1", "--trainer.limit_train_batches=0", "--trainer.limit_val_batches=0"]
    args += ["--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_model_summary=false"]
    status, _, err = run(*args, *(flag(f"trainer.{k}", v) for k, v in settings_.items()))
    if status != 0:
        assert_usage_error(status, err)


# ---------------------------------------------------------------------------------- config files
VALID_CONFIG = (Path(__file__).resolve().parents[2] / "examples" / "configs" / "phases.yaml").read_text()


@st.composite
def corrupted(draw: st.DrawFn, text: str) -> str | bytes:
    """``text`` cut, with characters inserted or replaced, or other text or bytes altogether."""
    kind = draw(st.sampled_from(["cut", "insert", "replace", "text", "bytes"]))
    if kind == "text":
        return draw(st.text(max_size=200))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    at = draw(st.integers(0, len(text)))
    if kind == "cut":
        return text[:at]
    piece = draw(st.text(alphabet=string.printable + "\t\xa0é", min_size=1, max_size=4))
    return text[:at] + piece + text[at + (len(piece) if kind == "replace" else 0) :]


@fuzz(20)
@given(content=corrupted(VALID_CONFIG))
def test_corrupt_config_files_are_usage_errors(content: str | bytes) -> None:
    config = write("corrupt.yaml", content)
    status, _, err = run("fit", "--config", str(config), "--print_config")
    if status != 0:
        assert_usage_error(status, err)


VALID_SCHEDULE = (Path(__file__).resolve().parents[2] / "examples" / "schedules" / "top_then_rest.yaml").read_text()


@fuzz(15)
@given(content=corrupted(VALID_SCHEDULE), suffix=st.sampled_from([".yaml", ".json"]))
def test_corrupt_schedule_files_are_usage_errors(content: str | bytes, suffix: str) -> None:
    schedule = write(f"schedule{suffix}", content)
    status, out, err = run("fit", f"--strategy={schedule}", "--print_config")
    if status == 0:
        assert yaml.safe_load(out)["strategy"]["class_path"].startswith("finetune_strategies.")
    else:
        assert_usage_error(status, err)


@pytest.mark.parametrize("option", ["--config", "--strategy"])
def test_binary_config_and_schedule_files_are_usage_errors(option: str) -> None:
    """Found by the fuzzing above: a file that is not UTF-8 raised UnicodeDecodeError from jsonargparse
    (``--config``) or from the schedule-file reader (``--strategy``)."""
    status, _, err = run("fit", option, str(write("binary.yaml", b"\x1a\x9e\xc0\xe5:")), "--print_config")
    assert_usage_error(status, err)
    assert "utf-8" in err.lower()


def test_missing_config_and_schedule_files_are_usage_errors() -> None:
    for args in (["--config", "nope.yaml"], ["--strategy", "nope.yaml"], ["--strategy=nope/schedule.json"]):
        status, _, err = run("fit", *args, "--print_config")
        assert_usage_error(status, err)
        assert "does not exist" in err


# ---------------------------------------------------------------------------------- transfer configs
TRANSFER = {
    "pre_trained_model_path": "pretrained.pt",
    "modules_to_match": {"backbone": "backbone"},
    "trainer": {**BASE_TRAINER, "max_epochs": 1},
    "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05}},
    "scheduler": {"class_path": "StepLR", "init_args": {"step_size": 1}},
    "replay": {"fraction": 0.2},
    "new_heads": {"head": "head", "num_heads": 1},
    "stages": [
        {"name": "frozen", "freeze_modules": ["backbone"], "train_bn": True},
        {"name": "all", "trainer": {"max_epochs": 1}, "optimizer": {"init_args": {"lr": 0.01}}, "replay": None},
    ],
}
SCHEMA_MAPPINGS = [
    (),
    ("new_heads",),
    ("replay",),
    ("stages", 0),
    ("stages", 1),
    ("trainer",),
    ("stages", 1, "trainer"),
]
"""Where every key is checked: an unknown one anywhere here must be refused."""
ANY_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXT, WORDS),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    children: list[tuple[Any, ...]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            children += _paths(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            children += _paths(child, (*path, index))
    return [path, *children]


def _at(config: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        config = config[key]
    return config


@st.composite
def mutated_transfer(draw: st.DrawFn, *, unknown_key: bool) -> dict[str, Any]:
    """The valid :data:`TRANSFER`, with a few values replaced by anything; with ``unknown_key``, also a key
    that is not in the schema, somewhere it is checked."""
    config = copy.deepcopy(TRANSFER)
    for _ in range(draw(st.integers(0 if unknown_key else 1, 3))):
        path = draw(st.sampled_from(_paths(config)[1:]))
        if path[:-1] and isinstance(_at(config, path[:-1]), (dict, list)):
            _at(config, path[:-1])[path[-1]] = draw(ANY_VALUE)
    if unknown_key:
        where = [p for p in SCHEMA_MAPPINGS if _is_mapping_at(config, p)]
        assume(where)
        target = _at(config, draw(st.sampled_from(where)))
        key = draw(IDENTIFIER.filter(lambda k: k not in target and k not in _SCHEMA_KEYS))
        target[key] = draw(ANY_VALUE)
    return config


def _is_mapping_at(config: Any, path: tuple[Any, ...]) -> bool:
    try:
        return isinstance(_at(config, path), dict)
    except (KeyError, IndexError, TypeError):
        return False


_SCHEMA_KEYS = set(TRANSFER) | {"datamodule", "output_dir", "seed", "weights_only", "name", "only_new_heads"}
_SCHEMA_KEYS |= {"reset_optimizer", "num_heads", "scale_factor", "train_only_new_heads", "head", "fraction"}
_SCHEMA_KEYS |= {"freeze_modules", "train_bn", "max_epochs", "callbacks"}


def test_the_transfer_fuzz_base_is_valid() -> None:
    assert [s.name for s in TransferConfig.from_dict(TRANSFER).stages] == ["frozen", "all"]


@fuzz(60)
@given(config=mutated_transfer(unknown_key=False))
def test_transfer_config_from_dict_builds_or_raises_transfer_config_error(config: dict[str, Any]) -> None:
    try:
        TransferConfig.from_dict(config)
    except TransferConfigError as error:
        message = str(error)
        assert message


@fuzz(40)
@given(config=mutated_transfer(unknown_key=True))
def test_transfer_config_refuses_an_unknown_key_anywhere(config: dict[str, Any]) -> None:
    with pytest.raises(TransferConfigError):
        TransferConfig.from_dict(config)


def _transfer_file(transfer: Any, workdir: Path) -> Path:
    import torch

    weights = workdir / "pretrained.pt"
    if not weights.exists():
        torch.save(TinyRegressor(init_seed=1).state_dict(), weights)
    config = {
        "model": {"class_path": "transfer_tools.TinyRegressor"},
        "data": {"class_path": "transfer_tools.TinyData", "init_args": {"n": 8}},
        "replay_data": {"class_path": "transfer_tools.TinyData", "init_args": {"n": 8, "seed": 1}},
        "transfer": transfer,
        "output_dir": str(workdir / "transfer-out"),
    }
    return write("transfer.yaml", yaml.safe_dump(config))


@fuzz(10)
@given(config=mutated_transfer(unknown_key=True))
def test_the_transfer_command_refuses_bad_configs_before_training(config: dict[str, Any], workdir: Path) -> None:
    status, _, err = run("transfer", "--config", str(_transfer_file(config, workdir)))
    assert_usage_error(status, err, "transfer")
    assert not (workdir / "transfer-out").exists()


@fuzz(10)
@given(content=corrupted(yaml.safe_dump({"transfer": TRANSFER})))
def test_the_transfer_command_with_corrupt_yaml(content: str | bytes, workdir: Path) -> None:
    config = write("transfer-corrupt.yaml", content)
    status, _, err = run("transfer", "--config", str(config), "--print_config")
    if status != 0:
        assert_usage_error(status, err, "transfer")


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("val_check_interval=1000", "val_check_interval"),
        ("strategy=deepspeed_stage_3", "deepspeed"),  # on CPU
        ("accelerator=tpu", "xla"),  # without torch_xla
        ("precision=transformer-engine", "transformer_engine"),  # without it
    ],
)
def test_settings_lightning_refuses_are_usage_errors(setting: str, message: str, workdir: Path) -> None:
    """Found by the fuzzing above: Lightning refuses these with a ValueError, RuntimeError or
    ModuleNotFoundError, when the Trainer is built or only when the fit starts."""
    args = [
        "fit",
        f"--model.backbone={BACKBONE}",
        "--model.pretrained=false",
        f"--data.train_folder={workdir / 'train'}",
    ]
    status, _, err = run(*args, "--trainer.max_epochs=1", "--trainer.logger=false", f"--trainer.{setting}")
    assert_usage_error(status, err)
    assert message in err.lower()
    assert not list(workdir.rglob("*.ckpt"))
