"""The transfer-learning config: typed, checked when it is built, loadable from a dict, YAML or JSON.

Everything that can be checked without the model and the data is checked here: unknown keys, types,
Trainer arguments, optimizer and scheduler classes and their arguments, selector syntax. Module
names are checked against the model by :func:`finetune_strategies.transfer.stages.plan_stages`,
still before any training.

Each stage's ``trainer``, ``datamodule``, ``optimizer``, ``scheduler`` and ``replay`` sections are
merged onto the base sections of the same name: nested mappings merge key by key, other values
replace. A stage optimizer or scheduler with a different ``class_path`` from the base does not
inherit the base's ``init_args``. ``scheduler: null`` (or ``optimizer: null``, ``replay: null``) in a
stage switches the base section off for that stage.
"""

from __future__ import annotations

import enum
import inspect
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import yaml

from finetune_strategies.core.optim import OptimizerSpec, SchedulerSpec, parse_optimizer, parse_scheduler
from finetune_strategies.errors import MissingPathError, TransferConfigError
from finetune_strategies.model.selectors import check_selector
from finetune_strategies.transfer.heads import check_heads
from finetune_strategies.validation import check_bool, check_int, check_known_keys, check_mapping


class Inherit(enum.Enum):
    """Marks a stage section that the stage does not give, so it comes from the base."""

    INHERIT = "inherit"


INHERIT = Inherit.INHERIT
Section = dict[str, Any] | None | Literal[Inherit.INHERIT]

TOP_KEYS = (
    "pre_trained_model_path",
    "modules_to_match",
    "weights_only",
    "stages",
    "trainer",
    "datamodule",
    "optimizer",
    "scheduler",
    "replay",
    "new_heads",
    "output_dir",
    "seed",
)
STAGE_KEYS = (
    "name",
    "freeze_modules",
    "train_bn",
    "only_new_heads",
    "reset_optimizer",
    "trainer",
    "datamodule",
    "optimizer",
    "scheduler",
    "replay",
)
HEADS_KEYS = ("head", "num_heads", "scale_factor", "train_only_new_heads", "seed")
REPLAY_KEYS = ("fraction", "seed")
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # never '.', '..' or a hidden name
_RESERVED_STAGE_NAMES = ("transfer_state.json",)  # files the runner writes beside the stage folders (record.STATE_FILE)
_TRAINER_ARGS = tuple(n for n in inspect.signature(pl.Trainer.__init__).parameters if n != "self")


def _section(value: Any, where: str, example: str) -> dict[str, Any] | None:
    return None if value is None else check_mapping(where, value, example=example, error=TransferConfigError)


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged onto ``base``: nested mappings key by key, other values replaced."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _merge_class_spec(base: dict[str, Any] | None, stage: Section) -> dict[str, Any] | None:
    if stage is INHERIT:
        return base
    if stage is None or base is None:
        return stage
    if "class_path" in stage and stage["class_path"] != base.get("class_path"):
        return dict(stage)  # another class: its init_args are not the base's
    return merge(base, stage)


def _check_trainer(section: dict[str, Any], where: str) -> dict[str, Any]:
    check_known_keys(section, _TRAINER_ARGS, f"{where} (Trainer arguments)", error=TransferConfigError)
    callbacks = section.get("callbacks")
    if callbacks is not None and not (
        isinstance(callbacks, list) and all(isinstance(c, pl.Callback) for c in callbacks)
    ):
        raise TransferConfigError(
            f"{where}.callbacks must be a list of Callback instances, got {callbacks!r}. "
            "Pass callbacks to run_transfer_learning(callbacks=[...]) instead."
        )
    return section


@dataclass(frozen=True)
class NewHeadsConfig:
    """Extra read-out heads added next to the pretrained one; their outputs are summed with it.

    Attributes:
        head: Dotted name of the pretrained read-out module.
        num_heads: How many new heads to add (>= 1).
        scale_factor: Multiplies the new heads' random initial parameters (>= 0; 0 starts them at zero).
        train_only_new_heads: Freeze every pretrained parameter in every stage, unless a stage sets
            ``only_new_heads: false``.
        seed: Seed for the new heads' initialisation (``None``: the global RNG).
    """

    head: str = "head"
    num_heads: int = 1
    scale_factor: float = 0.1
    train_only_new_heads: bool = False
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.head, str) or not self.head:
            raise TransferConfigError(f"new_heads.head must be a module name, got {self.head!r}.")
        check_heads(self.num_heads, self.scale_factor)
        check_bool("new_heads.train_only_new_heads", self.train_only_new_heads, error=TransferConfigError)
        if self.seed is not None:
            check_int("new_heads.seed", self.seed, error=TransferConfigError)

    @classmethod
    def from_dict(cls, data: Any) -> NewHeadsConfig:
        section = check_mapping(
            "new_heads",
            data,
            example="{'head': 'head', 'num_heads': 1, 'scale_factor': 0.1}",
            error=TransferConfigError,
        )
        check_known_keys(section, HEADS_KEYS, "new_heads", error=TransferConfigError)
        return cls(**section)


@dataclass(frozen=True)
class ReplayConfig:
    """Mix pretraining samples into the fine-tuning set: ``fraction`` of the mixed training set
    (0 <= fraction < 1) comes from the pretraining data, drawn once with ``seed``."""

    fraction: float
    seed: int = 0

    def __post_init__(self) -> None:
        f = self.fraction
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 <= f < 1:
            raise TransferConfigError(
                f"replay.fraction must be a number in [0, 1), the share of pretraining samples in the mixed "
                f"training set (0.5 for 50:50), got {f!r}."
            )
        check_int("replay.seed", self.seed, error=TransferConfigError)


def _replay(section: dict[str, Any] | None, where: str) -> ReplayConfig | None:
    if section is None:
        return None
    check_known_keys(section, REPLAY_KEYS, where, error=TransferConfigError)
    if "fraction" not in section:
        raise TransferConfigError(f"{where} needs 'fraction', e.g. {{'fraction': 0.3}}.")
    return ReplayConfig(**section)


@dataclass(frozen=True)
class StageConfig:
    """One stage as written: its overrides of the base sections and what it freezes."""

    name: str
    freeze_modules: tuple[str, ...] = ()
    train_bn: bool = False
    only_new_heads: bool | None = None
    reset_optimizer: bool = True
    trainer: dict[str, Any] = field(default_factory=dict)
    datamodule: dict[str, Any] = field(default_factory=dict)
    optimizer: Section = INHERIT
    scheduler: Section = INHERIT
    replay: Section = INHERIT

    @classmethod
    def from_dict(cls, data: Any, index: int) -> StageConfig:
        where = f"stages[{index}]"
        stage = check_mapping(
            where,
            data,
            example="{'freeze_modules': ['backbone'], 'trainer': {'max_epochs': 5}}",
            error=TransferConfigError,
        )
        check_known_keys(stage, STAGE_KEYS, where, error=TransferConfigError)
        name = stage.get("name", f"stage_{index + 1}")
        if not isinstance(name, str) or not _STAGE_NAME.match(name) or len(name) > 128:
            raise TransferConfigError(
                f"{where}.name must be letters, digits, '_', '-' or '.', starting with a letter, digit or '_' "
                f"(at most 128 characters), got {name!r}: it names the stage's folder inside output_dir."
            )
        if name.lower() in _RESERVED_STAGE_NAMES:
            raise TransferConfigError(
                f"{where}.name {name!r} is the name of the run's record file in output_dir; choose another name."
            )
        freeze = stage.get("freeze_modules") or []
        if isinstance(freeze, str) or not isinstance(freeze, (list, tuple)):
            raise TransferConfigError(f"{where}.freeze_modules must be a list of module names, got {freeze!r}.")
        for i, selector in enumerate(freeze):
            try:
                check_selector(selector)
            except TransferConfigError as error:
                raise TransferConfigError(f"{where}.freeze_modules[{i}]: {error}") from None
        only = stage.get("only_new_heads")
        sections: dict[str, Section] = {}
        for key, example in (
            ("optimizer", "{'init_args': {'lr': 0.0001}}"),
            ("scheduler", "{'class_path': 'StepLR', 'init_args': {'step_size': 5}}"),
            ("replay", "{'fraction': 0.3}"),
        ):
            sections[key] = _section(stage[key], f"{where}.{key}", example) if key in stage else INHERIT
        return cls(
            name=name,
            freeze_modules=tuple(freeze),
            train_bn=check_bool(f"{where}.train_bn", stage.get("train_bn", False), error=TransferConfigError),
            reset_optimizer=check_bool(
                f"{where}.reset_optimizer", stage.get("reset_optimizer", True), error=TransferConfigError
            ),
            only_new_heads=None
            if only is None
            else check_bool(f"{where}.only_new_heads", only, error=TransferConfigError),
            trainer=check_mapping(
                f"{where}.trainer", stage.get("trainer") or {}, example="{'max_epochs': 5}", error=TransferConfigError
            ),
            datamodule=check_mapping(
                f"{where}.datamodule",
                stage.get("datamodule") or {},
                example="{'batch_size': 8}",
                error=TransferConfigError,
            ),
            optimizer=sections["optimizer"],
            scheduler=sections["scheduler"],
            replay=sections["replay"],
        )


@dataclass(frozen=True)
class StageSettings:
    """A stage's sections merged onto the base, with its optimizer and scheduler classes imported."""

    index: int
    name: str
    freeze_modules: tuple[str, ...]
    train_bn: bool
    only_new_heads: bool
    reset_optimizer: bool
    trainer: dict[str, Any]
    datamodule: dict[str, Any]
    optimizer: OptimizerSpec | None
    scheduler: SchedulerSpec | None
    replay: ReplayConfig | None
    raw: dict[str, Any]
    """The merged sections as plain data, for the resume fingerprint."""


def _plain(value: Any) -> Any:
    """``value`` as YAML/JSON data: classes become dotted paths, other objects ``<TypeName>`` (stable
    across processes, unlike a repr with an address, so resume fingerprints stay valid)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"<{type(value).__qualname__}>"


@dataclass(frozen=True)
class TransferConfig:
    """A staged transfer-learning run (see the module docstring and ``docs/transfer_learning.md``)."""

    stages: tuple[StageConfig, ...]
    pre_trained_model_path: str | None = None
    modules_to_match: dict[str, str] | None = None
    weights_only: bool = True
    trainer: dict[str, Any] = field(default_factory=dict)
    datamodule: dict[str, Any] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    replay: dict[str, Any] | None = None
    new_heads: NewHeadsConfig | None = None
    output_dir: str = "transfer_learning"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple) or not self.stages:
            raise TransferConfigError("`stages` must be a non-empty list of stages, e.g. [{'freeze_modules': []}].")
        names = [s.name for s in self.stages]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise TransferConfigError(f"Stage names must be unique; {duplicated} appear more than once.")
        path = self.pre_trained_model_path
        if path is not None and (not isinstance(path, str) or not path):
            raise TransferConfigError(f"pre_trained_model_path must be a file path or null, got {path!r}.")
        match = self.modules_to_match
        if match is not None:
            if (
                not isinstance(match, Mapping)
                or not match
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in match.items())
            ):
                raise TransferConfigError(
                    "modules_to_match must be null (match everything) or a non-empty mapping "
                    f"{{'name_in_pretrained': 'name_in_new_model'}}, got {match!r}."
                )
            if path is None:
                raise TransferConfigError("modules_to_match is set but pre_trained_model_path is not.")
        check_bool("weights_only", self.weights_only, error=TransferConfigError)
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise TransferConfigError(f"output_dir must be a folder path, got {self.output_dir!r}.")
        if self.seed is not None:
            check_int("seed", self.seed, error=TransferConfigError)
        if self.new_heads is not None and not isinstance(self.new_heads, NewHeadsConfig):
            raise TransferConfigError(f"new_heads must be a NewHeadsConfig, got {self.new_heads!r}.")
        _check_trainer(
            check_mapping("trainer", self.trainer, example="{'max_epochs': 10}", error=TransferConfigError), "trainer"
        )
        check_mapping("datamodule", self.datamodule, example="{'batch_size': 8}", error=TransferConfigError)
        for index in range(len(self.stages)):
            self.stage(index)  # every merged stage is checked now, before anything runs

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, data: Any) -> TransferConfig:
        """Build from a mapping with the keys of the YAML form."""
        config = check_mapping(
            "config", data, example="{'stages': [{'freeze_modules': ['backbone']}]}", error=TransferConfigError
        )
        check_known_keys(config, TOP_KEYS, "transfer-learning config", error=TransferConfigError)
        if "stages" not in config:
            raise TransferConfigError("The transfer-learning config needs `stages`, a non-empty list of stages.")
        stages = config.pop("stages")
        if not isinstance(stages, (list, tuple)):
            raise TransferConfigError(f"`stages` must be a list of stages, got {stages!r}.")
        heads = config.pop("new_heads", None)
        path = config.pop("pre_trained_model_path", None)
        for key in ("trainer", "datamodule"):
            config[key] = check_mapping(key, config.get(key) or {}, example="{}", error=TransferConfigError)
        for key in ("optimizer", "scheduler", "replay"):
            config[key] = _section(config.get(key), key, "{...}")
        return cls(
            stages=tuple(StageConfig.from_dict(s, i) for i, s in enumerate(stages)),
            pre_trained_model_path=os.fspath(path) if isinstance(path, os.PathLike) else path,
            new_heads=None if heads is None else NewHeadsConfig.from_dict(heads),
            **config,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> TransferConfig:
        """Load a ``.yaml``/``.yml`` or ``.json`` file."""
        file = Path(path)
        if not file.is_file():
            raise MissingPathError(f"Transfer-learning config file {str(file)!r} does not exist.")
        if file.suffix not in (".json", ".yaml", ".yml"):
            raise TransferConfigError(f"Config file {str(file)!r} must end in .yaml, .yml or .json.")
        text = file.read_text()
        try:
            data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise TransferConfigError(f"Cannot parse {str(file)!r}: {error}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, config: TransferConfig | Mapping[str, Any] | str | os.PathLike[str]) -> TransferConfig:
        """A config from a :class:`TransferConfig`, a mapping, or a YAML/JSON file path."""
        if isinstance(config, TransferConfig):
            return config
        if isinstance(config, Mapping):
            return cls.from_dict(config)
        if isinstance(config, (str, os.PathLike)):
            return cls.from_file(config)
        raise TransferConfigError(
            f"A transfer-learning config must be a TransferConfig, a dict or a YAML/JSON path, got {config!r}."
        )

    # ------------------------------------------------------------------ reading
    def stage(self, index: int) -> StageSettings:
        """Stage ``index`` (from 0) with its sections merged onto the base and checked."""
        stage = self.stages[index]
        where = f"stages[{index}] ({stage.name})"
        trainer = _check_trainer(merge(self.trainer, stage.trainer), f"{where}.trainer")
        datamodule = merge(self.datamodule, stage.datamodule)
        optimizer = _merge_class_spec(self.optimizer, stage.optimizer)
        scheduler = _merge_class_spec(self.scheduler, stage.scheduler)
        replay = _merge_class_spec(self.replay, stage.replay)
        if scheduler is not None and optimizer is None:
            raise TransferConfigError(
                f"{where}: a scheduler needs an optimizer spec in the config (the scheduler is built on it)."
            )
        only = stage.only_new_heads
        if only is None:
            only = self.new_heads.train_only_new_heads if self.new_heads is not None else False
        optimizer_spec = (
            None if optimizer is None else parse_optimizer(optimizer, f"{where}.optimizer", error=TransferConfigError)
        )
        if not stage.reset_optimizer:
            if index == 0:
                raise TransferConfigError(
                    f"{where}.reset_optimizer is false, but the first stage has no earlier optimizer state to keep."
                )
            previous = _merge_class_spec(self.optimizer, self.stages[index - 1].optimizer)
            before = (
                None
                if previous is None
                else parse_optimizer(previous, f"stages[{index - 1}].optimizer", error=TransferConfigError)
            )
            if before is not None and optimizer_spec is not None and before.cls is not optimizer_spec.cls:
                raise TransferConfigError(
                    f"{where}.reset_optimizer is false, but its optimizer ({optimizer_spec.cls.__name__}) is "
                    f"not the previous stage's ({before.cls.__name__}): their states do not carry over."
                )
        if only and self.new_heads is None:
            raise TransferConfigError(f"{where}.only_new_heads is true, but the config adds no new_heads.")
        return StageSettings(
            index=index,
            name=stage.name,
            freeze_modules=stage.freeze_modules,
            train_bn=stage.train_bn,
            only_new_heads=only,
            reset_optimizer=stage.reset_optimizer,
            trainer=trainer,
            datamodule=datamodule,
            optimizer=optimizer_spec,
            scheduler=None
            if scheduler is None
            else parse_scheduler(scheduler, f"{where}.scheduler", error=TransferConfigError),
            replay=_replay(replay, f"{where}.replay"),
            raw=_plain(
                {
                    "name": stage.name,
                    "freeze_modules": stage.freeze_modules,
                    "train_bn": stage.train_bn,
                    "only_new_heads": only,
                    "reset_optimizer": stage.reset_optimizer,
                    "trainer": trainer,
                    "datamodule": datamodule,
                    "optimizer": optimizer,
                    "scheduler": scheduler,
                    "replay": replay,
                }
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """The config as plain YAML/JSON data (classes as dotted paths)."""
        stages = []
        for stage in self.stages:
            entry: dict[str, Any] = {
                "name": stage.name,
                "freeze_modules": list(stage.freeze_modules),
                "train_bn": stage.train_bn,
                "reset_optimizer": stage.reset_optimizer,
                "trainer": stage.trainer,
                "datamodule": stage.datamodule,
            }
            if stage.only_new_heads is not None:
                entry["only_new_heads"] = stage.only_new_heads
            for key in ("optimizer", "scheduler", "replay"):
                value = getattr(stage, key)
                if value is not INHERIT:
                    entry[key] = value
            stages.append(entry)
        heads = self.new_heads
        plain: dict[str, Any] = _plain(
            {
                "pre_trained_model_path": self.pre_trained_model_path,
                "modules_to_match": self.modules_to_match,
                "weights_only": self.weights_only,
                "output_dir": self.output_dir,
                "seed": self.seed,
                "trainer": self.trainer,
                "datamodule": self.datamodule,
                "optimizer": self.optimizer,
                "scheduler": self.scheduler,
                "replay": self.replay,
                "new_heads": None if heads is None else {k: getattr(heads, k) for k in HEADS_KEYS},
                "stages": stages,
            }
        )
        return plain
