"""The ``finetune-strategies`` command.

* ``fit`` / ``validate`` / ``test`` / ``predict``: a ``LightningCLI`` over
  :class:`~finetune_strategies.image.ImageClassifier` and
  :class:`~finetune_strategies.image.ImageClassificationData`, so ``--config``, ``--print_config``
  and ``--help`` work as in any Lightning CLI. A command line that names its classes
  (``--model TextClassifier --data TextClassificationData``, or a config whose ``model`` / ``data``
  has a ``class_path``) runs the same subcommands in subclass mode over any LightningModule and
  LightningDataModule (:func:`names_classes`); the data's ``num_classes`` and ``labels`` still fill the
  model's ``num_classes`` or ``num_labels`` and ``labels``. ``fit`` runs ``Trainer.finetune`` with the strategy
  given by ``--strategy`` (a class name such as ``FreezeUnfreeze``, a registered name such as
  ``freeze_unfreeze``, or a schedule file) and its options (``--strategy.unfreeze_epoch 3``).
  ``predict`` writes a CSV (``--output``).
* ``explain``: the per-epoch plan of ``fit``'s strategy on its model (``Trainer.explain``), from the
  same arguments and config files as ``fit``, without training and without reading images.
* ``suggest``: which layers to fine-tune (:func:`~finetune_strategies.choose.suggest_layers`), from the same
  arguments and config files as ``fit``: short probe runs scored on the validation split; ``--output FILE``
  writes the chosen strategy for ``fit --strategy FILE`` (:mod:`finetune_strategies.cli.suggest`).
* ``demo``: the built-in demo (:mod:`finetune_strategies.demo`).
* ``transfer``: staged transfer learning, provided by ``finetune_strategies.cli.transfer``.

Exit statuses are those of :mod:`finetune_strategies.cli.exit_status`: 2 for usage errors, 1 for a run
that failed.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from rich.console import Console
from rich.table import Table
from typing_extensions import override

from finetune_strategies import _lightning
from finetune_strategies.checkpointing.checkpoint_io import TRUST_HINT
from finetune_strategies.checkpointing.files import check_file
from finetune_strategies.checkpointing.weights import torch_load
from finetune_strategies.cli import suggest
from finetune_strategies.cli.exit_status import (
    USAGE_ERROR,
    as_usage_errors,
    raised_by_lightning,
    report,
    reported_error,
)
from finetune_strategies.cli.yaml_dump import use_round_trip_yaml
from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.core.optim import check_name_from_file
from finetune_strategies.errors import (
    CheckpointError,
    ImageDataError,
    ModelConfigError,
    StrategySpecError,
    StrategySpecTypeError,
    TextDataError,
    UsageError,
)
from finetune_strategies.image.data import ImageClassificationData
from finetune_strategies.image.model import ImageClassifier
from finetune_strategies.image.predictions import PredictionsCSVWriter
from finetune_strategies.image.weight_files import WEIGHT_SUFFIXES
from finetune_strategies.strategies.registry import (
    available_strategies,
    is_spec_file,
    load_spec_file,
    registered_factory,
)
from finetune_strategies.text.model import TextClassifier
from finetune_strategies.trainer import Trainer
from finetune_strategies.validation import did_you_mean

PROG = "finetune-strategies"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict", "explain", suggest.SUBCOMMAND)
FIT_CONFIG_SUBCOMMANDS = ("fit", "explain", suggest.SUBCOMMAND)
"""Subcommands that read a ``fit`` config: an argument added for ``fit`` belongs to both."""

USAGE = f"""usage: {PROG} {{fit,validate,test,predict,explain,suggest,demo,transfer}} ...

Fine-tune image and text classifiers with Flash-style strategies on Lightning 2.x.

subcommands:
  fit        Train an ImageClassifier, or a text classifier with --model TextClassifier
             --data TextClassificationData; --strategy picks the fine-tuning strategy.
  validate   Validate a model (usually with --ckpt_path).
  test       Test a model (usually with --ckpt_path).
  predict    Predict images or texts and write a CSV (--output, default predictions.csv).
  explain    Show what trains, epoch by epoch, and the param groups' lrs, before training;
             takes fit's arguments and config files (--trainer.max_epochs is required).
  suggest    Suggest which layers to fine-tune (the head alone, the first, middle or last third
             of the backbone, everything) with short probe runs scored on the validation split;
             takes fit's arguments and config files, --budget_steps, --monitor, --mode, and
             --output FILE to write the chosen strategy for fit --strategy FILE.
  demo       Few-shot fine-tuning on scikit-learn's digits with every strategy; no download.
             Needs the demo extra: pip install "finetune-strategies[demo]".
  transfer   Staged transfer learning.

Run `{PROG} <subcommand> --help` for the options of a subcommand, and
`{PROG} fit --print_config` for a complete YAML config to start from.
Exit status: 0 success, 1 the run failed, 2 usage error (a bad flag, value or config file).
"""


# ---------------------------------------------------------------------------------- --strategy
def _class_path(name: str) -> tuple[str, dict[str, Any]]:
    """The class path and fixed options of a registered strategy name."""
    factory, fixed = registered_factory(name)
    if not isinstance(factory, type):
        raise StrategySpecTypeError(
            f"Strategy {name!r} is registered as a function ({factory!r}); the command line needs a class. "
            "Give its class path to --strategy instead."
        )
    return f"{factory.__module__}.{factory.__qualname__}", fixed


def _option_defaults(name: str) -> dict[str, Any]:
    """The options whose default a registered strategy changes (``surgical``: ``initial_denom_lr=1.0``; ``lp_ft``:
    ``train_bn=False``, ``bn_eval=True``, ``cache_features=True``). The parser fills every option with the base
    class's default, so a registered name sets these first."""
    factory, fixed = registered_factory(name)
    if isinstance(factory, type) and issubclass(factory, FinetuningStrategy):
        return factory.changed_defaults(fixed)
    return {}


def _flag(key: str, value: Any) -> str:
    return f"--strategy.{key}={str(value).lower() if isinstance(value, bool) else value}"


def _strategy_classes() -> set[str]:
    """Names of the BaseFinetuning subclasses imported so far: what jsonargparse takes as a bare class name."""
    names, stack = set(), list(BaseFinetuning.__subclasses__())
    while stack:
        cls = stack.pop()
        names.add(cls.__name__)
        stack.extend(cls.__subclasses__())
    return names


def _from_spec_file(path: str) -> list[str]:
    """``--strategy schedule.yaml`` (``{"strategy": name, **options}``) as the class-path form."""
    options = load_spec_file(path)
    name = options.pop("strategy")
    if not isinstance(name, str):
        raise StrategySpecTypeError(f"Strategy file {path!r}: 'strategy' must be a strategy name, got {name!r}.")
    class_path, fixed = _class_path(name)
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise StrategySpecTypeError(f"Strategy file {path!r}: {name!r} sets {clash} itself; remove them.")
    # default=str: YAML reads 2024-01-01 as a date, which JSON cannot hold; the options check it as text
    init_args = {**_option_defaults(name), **options, **fixed}
    return ["--strategy", json.dumps({"class_path": class_path, "init_args": init_args}, default=str)]


def _expand_strategy(value: str) -> list[str]:
    if is_spec_file(value):
        return _from_spec_file(value)
    if value in available_strategies():
        class_path, fixed = _class_path(value)
        flags = (_flag(k, v) for k, v in {**_option_defaults(value), **fixed}.items())
        return ["--strategy", class_path, *flags]
    known = [*available_strategies(), *_strategy_classes()]
    if value.isidentifier() and value not in ("null", "None", *known):
        raise StrategySpecError(
            f"Unknown fine-tuning strategy {value!r}.{did_you_mean(value, known)}"
            f" Give a registered name ({', '.join(available_strategies())}), a class name such as FreezeUnfreeze, "
            "a class path, or a schedule file (.yaml, .yml, .json)."
        )
    return ["--strategy", value]  # a class name, a class path or a class_path/init_args mapping


def expand_strategy_names(args: list[str]) -> list[str]:
    """Rewrite ``--strategy`` values that jsonargparse does not read into the class-path form.

    * A registered name becomes its class path, and fixed options of the name follow it:
      ``freeze_unfreeze_deepspeed`` becomes ``--strategy ...FreezeUnfreeze --strategy.preregister_groups=true``;
      so do the options whose default the class changes (its ``option_defaults``: ``surgical`` sets
      ``--strategy.initial_denom_lr=1.0``), which later ``--strategy.<option>`` flags override.
    * A schedule file (``.yaml``, ``.yml``, ``.json``; see
      :func:`~finetune_strategies.strategies.registry.load_spec_file`) becomes
      ``{"class_path": ..., "init_args": {...}}``; ``--strategy.<option>`` flags after it override it.
    * A bare name that is neither registered nor a known class raises :class:`StrategySpecError`.
    """
    out: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--strategy" and index + 1 < len(args):
            out.extend(_expand_strategy(args[index + 1]))
            index += 2
        elif arg.startswith("--strategy="):
            out.extend(_expand_strategy(arg.split("=", 1)[1]))
            index += 1
        else:
            out.append(arg)
            index += 1
    return out


# ---------------------------------------------------------------------------------- the CLI
EXPLAIN_TRAINER: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "num_nodes": 1,
    "strategy": "auto",
    "precision": None,
    "plugins": None,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}
"""Trainer settings of ``explain``, over the config's: a plan needs no device, logger or checkpoint."""


def _required_classes(value: Any) -> Any:
    if value is None:
        raise ImageDataError(
            "The data has no labelled training data, so the number of classes is unknown. Set "
            "--data.train_folder (or use a config whose data section has one)."
        )
    return value


def _required_labels(value: Any) -> Any:
    if value is None:
        raise TextDataError(
            "The data has no labelled training data, so the number of classes is unknown. Set --data.train_file "
            "(or use a config whose data section has one), or --model.init_args.num_labels."
        )
    return value


# ---------------------------------------------------------------------------------- any task
CLASS_COUNT_ARGUMENTS = ("num_classes", "num_labels")
"""The model arguments that the data's ``num_classes`` fills: ImageClassifier's and TextClassifier's."""


def _config_names_classes(path: str) -> bool:
    """Whether the YAML/JSON config at ``path`` gives its ``model`` or ``data`` as a class (``class_path``, or
    a class name), at the top or under a subcommand. A file that cannot be read is left to the parser."""
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(config, dict):
        return False
    sections = [config, *(config[name] for name in LIGHTNING_SUBCOMMANDS if isinstance(config.get(name), dict))]
    return any(
        isinstance(value, str) or (isinstance(value, dict) and "class_path" in value)
        for section in sections
        for value in (section.get("model"), section.get("data"))
    )


def names_classes(args: list[str]) -> bool:
    """Whether the arguments of a subcommand name the model or data class (``--model TextClassifier``,
    ``--data=...``, or a ``--config`` file that does): the CLI then runs in subclass mode."""
    for index, arg in enumerate(args):
        if arg in ("--model", "--data") or arg.startswith(("--model=", "--data=")):
            return True
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and index + 1 < len(args):
            path = args[index + 1]
        if path is not None and _config_names_classes(path):
            return True
    return False


def _init_args(section: Any) -> Any:
    """The constructor arguments of a model or data config section: its ``init_args`` in subclass mode."""
    return section["init_args"] if "class_path" in section else section


def _class_of(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    found: type = getattr(importlib.import_module(module), name)
    return found


@_lightning.with_subcommand_arguments
class FinetuneCLI(LightningCLI):
    """LightningCLI with ``--strategy`` for ``fit``, ``explain`` and ``suggest``, a CSV ``--output`` for ``predict``,
    and a strategy file ``--output`` for ``suggest``.

    A value that the model, data, strategy or trainer rejects while they are built is a usage error.
    """

    def __init__(self, *args: Any, subcommand: str | None = None, **kwargs: Any) -> None:
        """``subcommand``: build only its parser (the command line names it): startup is 3x faster."""
        self.only_subcommand = subcommand
        super().__init__(*args, **kwargs)

    @override
    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]  # Lightning calls self.subcommands()
        every = {
            **LightningCLI.subcommands(),
            "explain": {"model", "strategy"},
            suggest.SUBCOMMAND: {"model", "datamodule", "strategy_options"},
        }
        return {name: skip for name, skip in every.items() if self.only_subcommand in (None, name)}

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        try:
            super().parse_arguments(parser, args)
        except UnicodeDecodeError as error:  # jsonargparse reads config files and lets this through
            raise UsageError(
                f"A file given on the command line is not UTF-8 text ({error}). Config files are YAML or JSON."
            ) from None

    def add_subcommand_arguments(self, parser: LightningArgumentParser, subcommand: str) -> None:
        """The arguments of ``subcommand`` besides Lightning's (see :func:`_lightning.with_subcommand_arguments`)."""
        if subcommand in FIT_CONFIG_SUBCOMMANDS:
            parser.add_subclass_arguments(
                BaseFinetuning,
                "strategy",
                required=False,
                fail_untyped=False,
                help=(
                    "Fine-tuning strategy: a class (NoFreeze, Freeze, FreezeUnfreeze, UnfreezeMilestones, "
                    "GradualUnfreeze, Phases, BackboneFinetuningStrategy, SurgicalFinetuning, Lora, or a class "
                    "path), a registered name "
                    "(freeze_unfreeze, ...) or a schedule file (.yaml/.json), with options as --strategy.<option>."
                ),
            )
            parser.set_defaults({"strategy": {"class_path": "finetune_strategies.strategies.builtins.NoFreeze"}})
            add_export_argument(parser)
        if subcommand in ("explain", suggest.SUBCOMMAND):
            # fit's own arguments (ckpt_path, ...), so that a fit config parses; they do not change the plan
            parser.add_method_arguments(self.trainer_class, "fit", skip=set(LightningCLI.subcommands()["fit"]))
        linked = ("fit", "validate", "test", suggest.SUBCOMMAND)
        if subcommand in linked and not self.subclass_mode_model:
            parser.link_arguments("data.num_classes", "model.num_classes", _required_classes, "instantiate")
            parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")
        elif subcommand in linked:  # a link whose target the model lacks is skipped
            for name in CLASS_COUNT_ARGUMENTS:
                parser.link_arguments("data.num_classes", f"model.init_args.{name}", _required_labels, "instantiate")
            parser.link_arguments("data.labels", "model.init_args.labels", apply_on="instantiate")
        if subcommand == "predict":
            parser.add_argument(
                "--output", type=Path, default=Path("predictions.csv"), help="CSV file for the predictions."
            )
        if subcommand == suggest.SUBCOMMAND:
            parser.add_argument(
                "--output",
                type=Path | None,
                default=None,
                help="Write the chosen strategy to this YAML file, which fit --strategy FILE reads.",
            )

    @override
    def instantiate_classes(self) -> None:
        with as_usage_errors():
            if self.subcommand == "explain":
                self._explain_without_data()
            super().instantiate_classes()
        if self.subclass_mode_model:
            self._forget_unused_links()

    def _forget_unused_links(self) -> None:
        """Drop from the model's hyperparameters the class count it does not take (``num_classes`` of a
        TextClassifier): the links fill both names, and a checkpoint must name only the model's arguments."""
        taken = inspect.signature(type(self.model).__init__).parameters
        for name in CLASS_COUNT_ARGUMENTS:
            if name not in taken:
                self.model.hparams.pop(name, None)

    def _explain_without_data(self) -> None:
        """``explain`` needs the number of classes, not the data: ``--model.num_classes`` (``num_labels``), or
        the class folders of ``--data.train_folder`` (their names are read, no image is), or the labels of the
        training texts."""
        config = self.config["explain"]
        model = _init_args(config["model"])
        count = next((name for name in CLASS_COUNT_ARGUMENTS if name in model), None)
        if count is not None and model[count] is None:
            if self.subclass_mode_model:
                data_config = config["data"]
                if data_config is None:
                    _required_labels(None)
                data = _class_of(data_config["class_path"])(**data_config["init_args"].as_dict())
                model[count] = _required_labels(getattr(data, "num_classes", None))
            else:
                data = ImageClassificationData(**config["data"].as_dict())
                model[count] = _required_classes(data.num_classes)
            model["labels"] = model["labels"] or data.labels
        # an empty data module: nothing is read
        config["data"] = None if self.subclass_mode_data else Namespace()  # type: ignore[no-untyped-call]

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.subcommand == "explain":  # the plan's trainer only counts epochs: run it on any machine, quietly
            kwargs = {**EXPLAIN_TRAINER, **kwargs}
        trainer = super().instantiate_trainer(**kwargs)
        assert isinstance(trainer, Trainer)
        return trainer

    def fit(self, model: pl.LightningModule, datamodule: pl.LightningDataModule, **kwargs: Any) -> None:
        strategy = self.config_init["fit"].get("strategy") or "no_freeze"
        trainer = self.trainer
        assert isinstance(trainer, Trainer)
        export = check_export_path(self.config["fit"].get("export"), model)
        try:
            trainer.finetune(
                model,
                datamodule,
                strategy=strategy,
                ckpt_path=kwargs.get("ckpt_path"),
                weights_only=kwargs.get("weights_only"),
            )
        except Exception as error:
            if trainer.global_step or reported_error(error) is not None or not raised_by_lightning(error):
                raise
            # Lightning refused a setting as the fit started (a val_check_interval longer than an epoch, ...)
            raise UsageError(str(error).strip()) from error
        export_backbone(model, export)

    def explain(self, model: pl.LightningModule, steps_per_epoch: int = 1, **_: Any) -> None:
        strategy = self.config_init["explain"].get("strategy") or "no_freeze"
        trainer = self.trainer
        assert isinstance(trainer, Trainer)
        with as_usage_errors():  # nothing runs: every error is about the arguments
            plan = trainer.explain(model, strategy, steps_per_epoch=steps_per_epoch)
        _print_wide(plan.table())

    def suggest(self, model: pl.LightningModule, datamodule: pl.LightningDataModule, **kwargs: Any) -> None:
        config = self.config[suggest.SUBCOMMAND]
        trainer = self.trainer
        assert isinstance(trainer, suggest.SuggestTrainer)
        options = suggest.changed_options(config.get("strategy"))
        with as_usage_errors():
            suggestion = trainer.suggest(model, datamodule, strategy_options=options, **kwargs)
        _print_wide(suggestion.table())
        _print_wide(suggestion.gradient_table())
        output = config.get("output")
        if output is not None:
            suggest.write_strategy(suggestion, Path(output))
            print(f"Strategy written to {output}: finetune-strategies fit ... --strategy {output}")

    def predict(self, model: pl.LightningModule, datamodule: pl.LightningDataModule, **kwargs: Any) -> None:
        output = Path(self.config["predict"]["output"])
        self.trainer.callbacks.append(PredictionsCSVWriter(output))  # type: ignore[attr-defined]
        self.trainer.predict(
            model,
            datamodule=datamodule,
            ckpt_path=kwargs.get("ckpt_path"),
            weights_only=kwargs.get("weights_only"),
            return_predictions=False,
        )
        print(f"Predictions written to {output}")


def _print_wide(table: Table) -> None:
    console = Console()
    if not console.is_terminal:  # a file or a pipe: as wide as the table needs, so that no name is cut
        natural = console.measure(table, options=console.options.update_width(10_000)).maximum
        console = Console(width=max(console.width, natural))
    console.print(table)


def _parse_ckpt_hyperparameters(cli: Any) -> None:
    """Read the model's hyperparameters from ``--ckpt_path`` into the config, as LightningCLI does, but
    check the file first and honour ``--weights_only``: a damaged file or one holding other objects is a
    one-line usage error (exit status 2), and ``--weights_only false`` loads a trusted full checkpoint."""
    subcommand = cli.config.get("subcommand")
    if not subcommand:
        return
    config = cli.config[subcommand]
    path = config.get("ckpt_path")
    if not path or not Path(path).is_file():  # "last", "best", a remote path: the trainer resolves them
        return
    weights_only = config.get("weights_only") is not False
    try:
        check_file(path)
        loaded = torch_load(
            path, f"checkpoint {str(path)!r}", weights_only=weights_only, error=CheckpointError, opt_in=TRUST_HINT
        )
    except CheckpointError as error:
        raise UsageError(f"--ckpt_path: {error}") from error
    hparams = dict(loaded.get("hyper_parameters") or {}) if isinstance(loaded, dict) else {}
    hparams.pop("_instantiator", None)
    if not hparams:
        return
    source = f"the hyperparameters of checkpoint {path}"
    for key in ("optimizer", "scheduler"):  # a checkpoint may name classes, but not make us import a module
        check_name_from_file(hparams.get(key), f"--ckpt_path: {key}", source, error=UsageError)
    if "_class_path" in hparams:
        hparams = {"class_path": hparams.pop("_class_path"), "dict_kwargs": hparams}
    cli.config = cli.parser.parse_object({subcommand: {"model": hparams}}, cli.config)


_lightning.replace_ckpt_hyperparameters(FinetuneCLI, _parse_ckpt_hyperparameters)


# ------------------------------------------------------------------ fit --export (the lora branch's addition)
def add_export_argument(parser: LightningArgumentParser) -> None:
    """``fit --export PATH``: write the trained backbone's weights (image) or model folder (text) after the fit."""
    parser.add_argument(
        "--export",
        type=Path | None,
        default=None,
        help=(
            "After fit, with ImageClassifier: save the backbone's weights to this .safetensors/.pth file, "
            "loadable by timm/torchvision and by --model.pretrained; with TextClassifier: write this folder with "
            "save_pretrained (model and tokenizer), loadable by transformers' from_pretrained and by "
            "--model.backbone. Adapters (lora) are merged in."
        ),
    )


def check_export_path(path: Path | str | None, model: pl.LightningModule | None = None) -> Path | None:
    """``path`` if it suits ``model`` (checked before training): a weight file for an image classifier, a
    folder for a text classifier; or None."""
    if path is None:
        return None
    if isinstance(model, TextClassifier):
        if Path(path).is_file():
            raise ModelConfigError(f"--export {str(path)!r} is a file; TextClassifier writes a folder there.")
        return Path(path)
    if model is not None and not isinstance(model, ImageClassifier):
        raise ModelConfigError(f"--export works with ImageClassifier and TextClassifier, not {type(model).__name__}.")
    if Path(path).suffix not in WEIGHT_SUFFIXES:
        raise ModelConfigError(f"--export {str(path)!r}: use a file name ending in {', '.join(WEIGHT_SUFFIXES)}.")
    return Path(path)


def export_backbone(model: pl.LightningModule, path: Path | None) -> None:
    """Save ``model`` to ``path``, if given: an image classifier's backbone (see
    :meth:`ImageClassifier.save_backbone`), a text classifier's folder (:meth:`TextClassifier.save_pretrained`)."""
    if path is None or not model.trainer.is_global_zero:
        return
    if isinstance(model, TextClassifier):
        print(f"Model and tokenizer written to {model.save_pretrained(path)}")
    elif isinstance(model, ImageClassifier):
        print(f"Backbone written to {model.save_backbone(path)}")


DESCRIPTIONS = {
    "fit": (
        "Fine-tune an ImageClassifier on ImageClassificationData (or, with --model TextClassifier --data "
        "TextClassificationData, a text classifier) with a strategy (--strategy)."
    ),
    "validate": "Validate a classifier, usually one loaded with --ckpt_path.",
    "test": "Test a classifier, usually one loaded with --ckpt_path.",
    "predict": (
        "Predict images (--data.predict_folder) or texts (--data.predict_file) and write a CSV of classes and "
        "probabilities (--output)."
    ),
    "explain": (
        "Print what trains in each epoch and every param group's lr, as fit would run it, without training. "
        "Takes fit's arguments and config files; needs --trainer.max_epochs, and --model.num_classes unless "
        "--data.train_folder has the class folders."
    ),
    suggest.SUBCOMMAND: suggest.DESCRIPTION,
}


def lightning_main(args: list[str]) -> int:
    """Run the LightningCLI subcommands (fit, validate, test, predict, explain, suggest)."""
    use_round_trip_yaml()  # --print_config and the saved config.yaml read back as written
    with warnings.catch_warnings():
        # main() passes the arguments explicitly, also when they come from sys.argv.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        any_task = names_classes(args[1:])
        FinetuneCLI(
            None if any_task else ImageClassifier,  # None: subclass mode over every LightningModule
            None if any_task else ImageClassificationData,
            subcommand=args[0],
            trainer_class=suggest.SuggestTrainer if args[0] == suggest.SUBCOMMAND else Trainer,
            args=expand_strategy_names(args),
            auto_configure_optimizers=False,  # the model builds its optimizer over trainable parameters
            save_config_kwargs={"overwrite": True},
            parser_kwargs={  # parse errors raise, so that main() reports them in one place
                "prog": PROG,
                "exit_on_error": False,
                args[0]: {"description": DESCRIPTIONS[args[0]], "exit_on_error": False},
            },
        )
    return 0


def transfer_main(args: list[str]) -> int:
    """Run ``finetune-strategies transfer``."""
    from finetune_strategies.cli.transfer import transfer_main as run_transfer  # imported when used: it is large

    return run_transfer(args)


def _demo(args: list[str]) -> int:
    # Without the [demo] extra this import raises MissingDependencyError, which main() reports (status 2).
    from finetune_strategies.cli.demo import demo_main

    return demo_main(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``finetune-strategies`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command = args[0]
    runners: dict[str, Callable[[list[str]], int]] = {"demo": _demo, "transfer": transfer_main}
    prog = f"{PROG} {command}"
    try:
        if command in runners:
            return runners[command](args[1:])
        if command not in LIGHTNING_SUBCOMMANDS:
            print(f"{PROG}: unknown subcommand {command!r}.\n\n{USAGE}", file=sys.stderr)
            return USAGE_ERROR
        return lightning_main(args)
    except argparse.ArgumentError as error:  # jsonargparse: an unknown option, a bad value or config file
        print(f"{prog}: error: {error}\nRun `{prog} --help` for the options.", file=sys.stderr)
        return USAGE_ERROR
    except Exception as error:
        if reported_error(error) is None:
            raise  # not ours, nor a Lightning configuration error: a bug, with its traceback
        return report(prog, error)
    except SystemExit as exit_:  # --help, --print_config
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
