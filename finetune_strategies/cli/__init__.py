"""The ``finetune-strategies`` command: ``fit``/``validate``/``test``/``predict``/``explain`` on
``LightningCLI`` (:mod:`~finetune_strategies.cli.main`), ``transfer`` and ``demo``."""

from finetune_strategies.cli.main import main

__all__ = ["main"]
