"""The built-in demo: few-shot fine-tuning on scikit-learn's digits with every strategy."""

from finetune_strategies.demo.command import demo_main
from finetune_strategies.demo.experiment import DemoResult, DemoSettings, RunResult, digits, run_demo

__all__ = ["DemoResult", "DemoSettings", "RunResult", "demo_main", "digits", "run_demo"]
