"""``finetune-strategies suggest``: :func:`~finetune_strategies.choose.suggest_layers` from ``fit``'s config.

The subcommand reads the same arguments and config files as ``fit`` (model, data, trainer, ``--strategy``),
plus ``--budget_steps``, ``--monitor``, ``--mode``, ``--tolerance``, ``--seed`` and ``--output``. It prints the
evidence and, with ``--output FILE``, writes the chosen strategy as a spec file that ``fit --strategy FILE``
reads. The options of ``--strategy`` that differ from the defaults (``--strategy.train_bn false``, ...) are
given to every probe; its schedule is not used.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml

from finetune_strategies.choose.suggest import DEFAULT_BUDGET_STEPS, RESERVED_TRAINER_KWARGS, LayerSuggestion, Mode
from finetune_strategies.choose.suggest import suggest_layers as run_suggest_layers
from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.core.options import StrategyOptions
from finetune_strategies.trainer import Trainer

SUBCOMMAND = "suggest"
DESCRIPTION = (
    "Suggest which layers to fine-tune: short probe runs of each candidate (the head alone, the first, middle "
    "and last third of the backbone's layers, everything), scored on the validation split. Takes fit's arguments "
    "and config files; --output FILE writes the chosen strategy for fit --strategy FILE."
)
NOT_FOR_PROBES = (
    *RESERVED_TRAINER_KWARGS,
    "callbacks",
    "logger",
    "enable_checkpointing",
    "enable_progress_bar",
    "enable_model_summary",
    "num_sanity_val_steps",
    "log_every_n_steps",
    "profiler",
    "barebones",
)
"""Trainer arguments of the config that the probes do not take: they run quietly, for their own length."""


class SuggestTrainer(Trainer):
    """The trainer of ``suggest``: a :class:`~finetune_strategies.Trainer` that keeps its arguments, so that every
    probe runs on a trainer like it (same accelerator, precision, batch limits, ...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.init_kwargs = dict(kwargs)

    def suggest(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule,
        budget_steps: int = DEFAULT_BUDGET_STEPS,
        monitor: str = "val_loss",
        mode: Mode = "min",
        tolerance: float = 0.0,
        seed: int = 0,
        strategy_options: dict[str, Any] | None = None,
    ) -> LayerSuggestion:
        """Suggest which layers to fine-tune, with short probe runs scored on the validation split.

        Args:
            model: The model to fine-tune.
            datamodule: Its data: the training and validation splits are read.
            budget_steps: The optimizer steps of all probes together, shared equally.
            monitor: The validation metric that scores each probe.
            mode: min if lower is better, max if higher is.
            tolerance: Scores this close to the best one are a tie, which goes to the candidate that tunes fewer
                parameters.
            seed: Seeds every probe.
            strategy_options: Strategy options every probe gets.
        """
        kwargs = {k: v for k, v in self.init_kwargs.items() if k not in NOT_FOR_PROBES}
        return run_suggest_layers(
            model,
            datamodule,
            budget_steps=budget_steps,
            monitor=monitor,
            mode=mode,
            tolerance=tolerance,
            seed=seed,
            options=strategy_options,
            trainer_kwargs=kwargs,
        )


def changed_options(strategy_config: Any) -> dict[str, Any]:
    """The strategy options of a ``--strategy`` config (``class_path`` / ``init_args``) that differ from the
    defaults of every strategy: what the probes should share."""
    if strategy_config is None or "init_args" not in strategy_config:
        return {}
    init_args = strategy_config["init_args"]
    given = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
    defaults = {p.name: p.default for p in list(inspect.signature(FinetuningStrategy.__init__).parameters.values())}
    return {
        key: value
        for key, value in given.items()
        if key in StrategyOptions.__annotations__ and value != defaults.get(key)
    }


def write_strategy(suggestion: LayerSuggestion, path: Path) -> None:
    """Write ``suggestion.strategy`` as a spec file (YAML), with the evidence as comments."""
    comments = "".join(f"# {line}\n" for line in str(suggestion).splitlines())
    body = yaml.safe_dump(suggestion.strategy, sort_keys=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(comments + body, encoding="utf-8")
