"""``finetune-strategies transfer --config tl.yaml``: run a transfer-learning config from the shell.

The YAML names the model and data-module classes as LightningCLI does, and holds the
transfer-learning config under ``transfer`` (or a path to a YAML/JSON file with it)::

    model:
      class_path: my_package.MyModel
      init_args: {hidden: 64}
    data:                      # optional; rebuilt for every stage with its `datamodule` settings
      class_path: my_package.MyData
      init_args: {batch_size: 16}
    replay_data:               # optional; pretraining data for stages with `replay`
      class_path: my_package.PretrainingData
    transfer:
      pre_trained_model_path: pretrained.ckpt
      stages: [...]
    output_dir: null           # optional; overrides transfer.output_dir
    resume: true               # false redoes finished stages

Every flag can also be given on the command line (``--transfer.output_dir runs/x`` is not possible
because ``transfer`` is one value; use ``--output_dir``). The folders of the config files and the
working directory are added to ``sys.path``, so classes next to the config can be named.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace  # type: ignore[attr-defined]
from typing_extensions import override

from finetune_strategies.cli.exit_status import USAGE_ERROR, as_usage_errors, report
from finetune_strategies.cli.yaml_dump import use_round_trip_yaml
from finetune_strategies.errors import FinetuningError, TransferConfigError
from finetune_strategies.transfer.config import TransferConfig, merge
from finetune_strategies.transfer.runner import run_transfer_learning

PROG = "finetune-strategies transfer"


def build_parser() -> ArgumentParser:
    """The argument parser of the ``transfer`` subcommand."""
    parser = ArgumentParser(
        prog=PROG,
        description="Staged transfer learning from pretrained weights, driven by a config file.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with the arguments below.")
    parser.add_subclass_arguments(pl.LightningModule, "model", required=True, help="The new model.")
    parser.add_subclass_arguments(pl.LightningDataModule, "data", required=False, help="The fine-tuning data.")
    parser.add_subclass_arguments(
        pl.LightningDataModule, "replay_data", required=False, help="Pretraining data, for replay."
    )
    parser.add_argument(
        "--transfer",
        type=dict | str,  # a bare dict: jsonargparse leaves class_path entries as written
        required=True,
        help="The transfer-learning config (pre_trained_model_path, modules_to_match, stages, ...), "
        "or a path to a YAML/JSON file holding it.",
    )
    parser.add_argument("--output_dir", type=str | None, default=None, help="Overrides transfer.output_dir.")
    parser.add_argument("--resume", type=bool, default=True, help="Reuse stages finished by an earlier run.")
    return parser


class _DataFactory:
    """Builds the ``data`` class for a stage, with the stage's settings merged onto its init_args."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.parser = ArgumentParser(exit_on_error=False)
        self.parser.add_subclass_arguments(pl.LightningDataModule, "data", required=True)
        self.spec = dict(spec)

    def _parse(self, settings: Mapping[str, Any]) -> Namespace:
        init_args = merge(self.spec.get("init_args") or {}, settings)
        try:
            parsed: Namespace = self.parser.parse_object({"data": {**self.spec, "init_args": init_args}})
        except Exception as error:  # jsonargparse reports type and name errors as several classes
            raise TransferConfigError(f"The data settings {dict(settings)} do not fit `data`: {error}") from None
        return parsed

    def check(self, settings: Mapping[str, Any]) -> None:
        self._parse(settings)

    def __call__(self, **settings: Any) -> pl.LightningDataModule:
        datamodule = self.parser.instantiate(self._parse(settings)).data
        assert isinstance(datamodule, pl.LightningDataModule)
        return datamodule


def _config_files(argv: list[str]) -> list[str]:
    files = []
    for index, arg in enumerate(argv):
        if arg == "--config" and index + 1 < len(argv):
            files.append(argv[index + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def _extend_path(argv: list[str]) -> None:
    for folder in [os.getcwd(), *(str(Path(f).resolve().parent) for f in _config_files(argv))]:
        if folder not in sys.path:
            sys.path.append(folder)


class _ProgressHandler(logging.Handler):
    """Prints the runner's log lines to the current ``sys.stderr``."""

    @override
    def emit(self, record: logging.LogRecord) -> None:
        print(f"[transfer] {record.getMessage()}", file=sys.stderr)


def _show_progress() -> None:
    logger = logging.getLogger("finetune_strategies.transfer")
    logger.setLevel(logging.INFO)
    if not any(isinstance(h, _ProgressHandler) for h in logger.handlers):
        logger.addHandler(_ProgressHandler())


def _plain(value: Any) -> Any:
    if isinstance(value, Namespace):
        return {k: _plain(v) for k, v in vars(value).items()}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _run(args: Namespace) -> int:
    transfer = args.transfer
    config = TransferConfig.from_file(transfer) if isinstance(transfer, str) else TransferConfig.from_dict(transfer)
    factory = None
    if args.data is not None:
        factory = _DataFactory(_plain(args.data))
        for index in range(len(config.stages)):
            factory.check(config.stage(index).datamodule)  # before anything trains
    without_data = copy.deepcopy(args)
    without_data.data = None
    with as_usage_errors():  # the model or replay data rejected a value of the config
        objects = build_parser().instantiate(without_data)
    result = run_transfer_learning(
        config,
        objects.model,
        factory,
        replay_data=objects.replay_data,
        output_dir=args.output_dir,
        resume=args.resume,
    )
    for stage in result.stages:
        status = "reused" if stage.reused else "trained"
        metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(stage.metrics.items()))
        print(
            f"{stage.name}: {status}; frozen {', '.join(stage.frozen) or 'nothing'}; "
            f"{stage.trainable_params:,} of {stage.total_params:,} parameters trained; "
            f"checkpoint {stage.checkpoint}" + (f"; {metrics}" if metrics else "")
        )
    return 0


def transfer_main(argv: list[str]) -> int:
    """Entry point of ``finetune-strategies transfer``; returns the exit status."""
    _extend_path(argv)
    use_round_trip_yaml()
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --print_config
        return exit_.code if isinstance(exit_.code, int) else 0
    except Exception as error:  # jsonargparse: an unknown option, a bad value or config file
        return report(PROG, error, USAGE_ERROR)
    _show_progress()
    try:
        return _run(args)
    except FinetuningError as error:
        return report(PROG, error)  # 2 for a config error, 1 for a failed run (see exit_status)


def main() -> None:
    """Console-script style wrapper: ``python -m finetune_strategies.transfer --config tl.yaml``."""
    sys.exit(transfer_main(sys.argv[1:]))
