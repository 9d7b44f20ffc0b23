"""The ``finetune-strategies`` command.

* ``fit`` / ``validate`` / ``test`` / ``predict``: a ``LightningCLI`` over
  :class:`~finetune_strategies.image.ImageClassifier` and
  :class:`~finetune_strategies.image.ImageClassificationData`, so ``--config``, ``--print_config``
  and ``--help`` work as in any Lightning CLI. ``fit`` runs ``Trainer.finetune`` with the strategy
  given by ``--strategy`` (a class name such as ``FreezeUnfreeze``, or a registered name such as
  ``freeze_unfreeze``) and its options (``--strategy.unfreeze_epoch 3``). ``predict`` writes a CSV
  (``--output``).
* ``demo``: the built-in demo (:mod:`finetune_strategies.demo`).
* ``transfer``: staged transfer learning, provided by ``finetune_strategies.transfer.cli``.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import BaseFinetuning
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from finetune_strategies.errors import FinetuningError, ImageDataError, ModelConfigError, StrategySpecError
from finetune_strategies.image.data import ImageClassificationData
from finetune_strategies.image.model import ImageClassifier
from finetune_strategies.image.predictions import PredictionsCSVWriter
from finetune_strategies.image.weights import WEIGHT_SUFFIXES
from finetune_strategies.registry import registered_factory
from finetune_strategies.trainer import Trainer

PROG = "finetune-strategies"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")

USAGE = f"""usage: {PROG} {{fit,validate,test,predict,demo,transfer}} ...

Fine-tune image classifiers with Flash-style strategies on Lightning 2.x.

subcommands:
  fit        Train an ImageClassifier; --strategy picks the fine-tuning strategy.
  validate   Validate a model (usually with --ckpt_path).
  test       Test a model (usually with --ckpt_path).
  predict    Predict images and write a CSV (--output, default predictions.csv).
  demo       Few-shot fine-tuning on scikit-learn's digits with every strategy; no download.
  transfer   Staged transfer learning.

Run `{PROG} <subcommand> --help` for the options of a subcommand, and
`{PROG} fit --print_config` for a complete YAML config to start from.
"""


def _strategy_class_path(name: str) -> tuple[str, dict[str, Any]] | None:
    """The class path and fixed options of a registered strategy name, if it names a class."""
    try:
        factory, fixed = registered_factory(name)
    except StrategySpecError:
        return None
    if not isinstance(factory, type):
        return None
    return f"{factory.__module__}.{factory.__qualname__}", fixed


def expand_strategy_names(args: list[str]) -> list[str]:
    """Rewrite ``--strategy freeze_unfreeze`` (a registered name) as the strategy's class path.

    Fixed options of the name follow it, so ``freeze_unfreeze_deepspeed`` becomes
    ``--strategy ...FreezeUnfreeze --strategy.preregister_groups=true``.
    """
    out: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        value: str | None = None
        if arg == "--strategy" and index + 1 < len(args):
            value, step = args[index + 1], 2
        elif arg.startswith("--strategy="):
            value, step = arg.split("=", 1)[1], 1
        resolved = _strategy_class_path(value) if value is not None else None
        if resolved is None:
            out.append(arg)
            index += 1
            continue
        class_path, fixed = resolved
        out.extend(["--strategy", class_path])
        out.extend(f"--strategy.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in fixed.items())
        index += step
    return out


def _required_classes(value: Any) -> Any:
    if value is None:
        raise ImageDataError(
            "The data has no labelled training data, so the number of classes is unknown. Set "
            "--data.train_folder (or use a config whose data section has one)."
        )
    return value


class FinetuneCLI(LightningCLI):
    """LightningCLI with a ``--strategy`` for ``fit`` and a CSV ``--output`` for ``predict``."""

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        # Lightning builds one parser per subcommand here; the extra arguments depend on which.
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":
            parser.add_subclass_arguments(
                BaseFinetuning,
                "strategy",
                required=False,
                fail_untyped=False,
                help=(
                    "Fine-tuning strategy: a class (NoFreeze, Freeze, FreezeUnfreeze, UnfreezeMilestones, or "
                    "a class path) or a registered name (freeze_unfreeze, ...), with options as "
                    "--strategy.<option>."
                ),
            )
            parser.set_defaults({"strategy": {"class_path": "finetune_strategies.strategies.NoFreeze"}})
            add_export_argument(parser)
        if subcommand in ("fit", "validate", "test"):
            parser.link_arguments("data.num_classes", "model.num_classes", _required_classes, "instantiate")
            parser.link_arguments("data.labels", "model.labels", apply_on="instantiate")
        if subcommand == "predict":
            parser.add_argument(
                "--output", type=Path, default=Path("predictions.csv"), help="CSV file for the predictions."
            )
        return parser

    def fit(self, model: ImageClassifier, datamodule: ImageClassificationData, **kwargs: Any) -> None:
        strategy = self.config_init["fit"].get("strategy") or "no_freeze"
        trainer = self.trainer
        assert isinstance(trainer, Trainer)
        export = check_export_path(self.config["fit"].get("export"))
        trainer.finetune(model, datamodule, strategy=strategy, ckpt_path=kwargs.get("ckpt_path"))
        export_backbone(model, export)

    def predict(self, model: ImageClassifier, datamodule: ImageClassificationData, **kwargs: Any) -> None:
        output = Path(self.config["predict"]["output"])
        self.trainer.callbacks.append(PredictionsCSVWriter(output))  # type: ignore[attr-defined]
        self.trainer.predict(model, datamodule=datamodule, ckpt_path=kwargs.get("ckpt_path"), return_predictions=False)
        print(f"Predictions written to {output}")


# ------------------------------------------------------------------ fit --export (the lora branch's addition)
def add_export_argument(parser: LightningArgumentParser) -> None:
    """``fit --export PATH``: write the trained backbone's weights after the fit."""
    parser.add_argument(
        "--export",
        type=Path | None,
        default=None,
        help=(
            "After fit, save the backbone's weights to this .safetensors/.pth file, adapters (lora) merged in, "
            "loadable by timm/torchvision and by --model.pretrained."
        ),
    )


def check_export_path(path: Path | str | None) -> Path | None:
    """``path`` if it names a weight file (checked before training), or None."""
    if path is not None and Path(path).suffix not in WEIGHT_SUFFIXES:
        raise ModelConfigError(f"--export {str(path)!r}: use a file name ending in {', '.join(WEIGHT_SUFFIXES)}.")
    return None if path is None else Path(path)


def export_backbone(model: ImageClassifier, path: Path | None) -> None:
    """Save ``model``'s backbone to ``path`` (see :meth:`ImageClassifier.save_backbone`), if given."""
    if path is not None and model.trainer.is_global_zero:
        print(f"Backbone written to {model.save_backbone(path)}")


DESCRIPTIONS = {
    "fit": "Fine-tune an ImageClassifier on ImageClassificationData with a strategy (--strategy).",
    "validate": "Validate an ImageClassifier, usually one loaded with --ckpt_path.",
    "test": "Test an ImageClassifier, usually one loaded with --ckpt_path.",
    "predict": "Predict images (--data.predict_folder) and write a CSV of classes and probabilities (--output).",
}


def lightning_main(args: list[str]) -> int:
    """Run the LightningCLI subcommands (fit, validate, test, predict)."""
    with warnings.catch_warnings():
        # main() passes the arguments explicitly, also when they come from sys.argv.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        FinetuneCLI(
            ImageClassifier,
            ImageClassificationData,
            trainer_class=Trainer,
            args=expand_strategy_names(args),
            auto_configure_optimizers=False,  # the model builds its optimizer over trainable parameters
            save_config_kwargs={"overwrite": True},
            parser_kwargs={
                "prog": PROG,
                **{name: {"description": text} for name, text in DESCRIPTIONS.items()},
            },
        )
    return 0


def transfer_main(args: list[str]) -> int:
    """Hand ``transfer`` over to ``finetune_strategies.transfer.cli.transfer_main``."""
    try:
        module = importlib.import_module("finetune_strategies.transfer.cli")
    except ModuleNotFoundError as error:
        if error.name not in ("finetune_strategies.transfer", "finetune_strategies.transfer.cli"):
            raise
        print(
            f"{PROG} transfer: staged transfer learning is not available in this installation "
            "(finetune_strategies.transfer.cli is missing).",
            file=sys.stderr,
        )
        return 2
    entry: Callable[[list[str]], int] = module.transfer_main
    return int(entry(args))


def _demo(args: list[str]) -> int:
    from finetune_strategies.demo import demo_main

    return demo_main(args)


def _our_error(error: BaseException) -> FinetuningError | None:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, FinetuningError):
            return seen
        seen = seen.__cause__
    return None


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``finetune-strategies`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command = args[0]
    runners: dict[str, Callable[[list[str]], int]] = {"demo": _demo, "transfer": transfer_main}
    try:
        if command in runners:
            return runners[command](args[1:])
        if command not in LIGHTNING_SUBCOMMANDS:
            print(f"{PROG}: unknown subcommand {command!r}.\n\n{USAGE}", file=sys.stderr)
            return 2
        return lightning_main(args)
    except (FinetuningError, ValueError) as error:
        # jsonargparse wraps errors raised while linking arguments; report ours without a traceback.
        ours = _our_error(error)
        if ours is None:
            raise
        print(f"{PROG} {command}: error: {ours}", file=sys.stderr)
        return 1
    except SystemExit as exit_:  # argparse / jsonargparse: --help, --print_config, bad flags
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
