"""The built-in demo: few-shot fine-tuning on scikit-learn's digits with every strategy.

It needs the ``demo`` extra (scikit-learn, matplotlib): without it, importing this package raises
:class:`~finetune_strategies.errors.MissingDependencyError` naming ``pip install "finetune-strategies[demo]"``.
"""

from typing import Any

from finetune_strategies.demo.experiment import DemoResult, DemoSettings, RunResult, digits, run_demo

__all__ = ["DemoResult", "DemoSettings", "RunResult", "demo_main", "digits", "run_demo"]


def __getattr__(name: str) -> Any:
    if name == "demo_main":  # the CLI entry, which imports this package: loaded on first use
        from finetune_strategies.cli.demo import demo_main

        return demo_main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
