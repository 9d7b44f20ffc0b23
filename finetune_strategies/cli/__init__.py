"""The ``finetune-strategies`` command: ``fit``/``validate``/``test``/``predict``/``explain`` on
``LightningCLI`` (:mod:`~finetune_strategies.cli.app`), ``transfer`` and ``demo``.

The names below are what 0.1's ``finetune_strategies.cli`` module held.
"""

from finetune_strategies.cli.app import (
    DESCRIPTIONS,
    EXPLAIN_TRAINER,
    FIT_CONFIG_SUBCOMMANDS,
    LIGHTNING_SUBCOMMANDS,
    PROG,
    USAGE,
    FinetuneCLI,
    add_export_argument,
    check_export_path,
    expand_strategy_names,
    export_backbone,
    lightning_main,
    main,
    transfer_main,
)

__all__ = [
    "DESCRIPTIONS",
    "EXPLAIN_TRAINER",
    "FIT_CONFIG_SUBCOMMANDS",
    "LIGHTNING_SUBCOMMANDS",
    "PROG",
    "USAGE",
    "FinetuneCLI",
    "add_export_argument",
    "check_export_path",
    "expand_strategy_names",
    "export_backbone",
    "lightning_main",
    "main",
    "transfer_main",
]
