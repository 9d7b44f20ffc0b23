"""The resume state of a strategy: what its callback writes into a checkpoint and reads back.

:class:`StrategyState` is the one description of that state. The callback builds it for
``state_dict()`` and restores from it in ``load_state_dict()``; :mod:`finetune_strategies.core.resume`
reads it from a checkpoint file to check that a run resumes with the strategy and schedule that
wrote it. The keys are stable: checkpoints of earlier releases load.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StrategyState:
    """Everything a strategy needs to resume exactly where it stopped.

    Attributes:
        strategy: The strategy's class name.
        schedule: Each phase's signature (``[epoch, label]``), to detect a changed schedule.
        started_phases: Indices of the phases that have started.
        unfrozen_modules: ``(module name, train_bn)`` of every module whose own parameters were made
            trainable, in order; a resume thaws them again.
        optimizer_groups: Lightning's per-optimizer param-group layout (group settings and parameter
            names), with which ``BaseFinetuning`` rebuilds the groups on resume.
        stage: The current stage's plateau watch (best score, wait count, best snapshot; see
            :class:`~finetune_strategies.core.triggers.StageWatch`).
        transitions: The phase starts that triggers decided (epoch, phase, reason, best score).
        l2_sp_start: With ``l2_sp``, the pretrained weights L2-SP pulls toward (``w0``, by parameter name).
        options: Everything else that shapes what trains (the frozen modules, ``attr_names``, the layer
            unit and decay, the BatchNorm policy, the param groups each phase brings, ...), by name, as
            :meth:`~finetune_strategies.core.callback.FinetuningStrategy.training_options` gives them; a
            resume with other values is refused (:func:`option_differences`). Empty in checkpoints of
            releases before 0.3.
        lr_ramps: ``[plan index, param group index, lr, epoch]`` of each group an lr ramp moves
            (:class:`~finetune_strategies.core.groups.LrRamp`): the lr it set last, and at which epoch.
    """

    strategy: str
    schedule: list[list[Any]] = field(default_factory=list)
    started_phases: list[int] = field(default_factory=list)
    unfrozen_modules: list[tuple[str, bool]] = field(default_factory=list)
    optimizer_groups: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    stage: dict[str, Any] = field(default_factory=dict)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    l2_sp_start: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    lr_ramps: list[list[float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "internal_optimizer_metadata": self.optimizer_groups,
            "strategy": self.strategy,
            "schedule": [list(entry) for entry in self.schedule],
            "started_phases": sorted(self.started_phases),
            "unfrozen_modules": [[name, train_bn] for name, train_bn in self.unfrozen_modules],
            "stage": self.stage,
            "transitions": self.transitions,
            "l2_sp_start": self.l2_sp_start,
            "options": self.options,
            "lr_ramps": [list(entry) for entry in self.lr_ramps],
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> StrategyState:
        return cls(
            strategy=str(state.get("strategy", "")),
            schedule=[list(entry) for entry in state.get("schedule", [])],
            started_phases=[int(i) for i in state.get("started_phases", [])],
            unfrozen_modules=[(str(n), bool(t)) for n, t in state.get("unfrozen_modules", [])],
            optimizer_groups=dict(state.get("internal_optimizer_metadata", {})),
            stage=dict(state.get("stage", {})),
            transitions=list(state.get("transitions", [])),
            l2_sp_start=dict(state.get("l2_sp_start", {})),
            options=dict(state.get("options", {})),
            lr_ramps=[list(entry) for entry in state.get("lr_ramps", [])],
        )

    @staticmethod
    def is_ours(state: Any) -> bool:
        """Whether a callback's checkpoint entry was written by a finetune-strategies strategy."""
        return isinstance(state, Mapping) and "strategy" in state and "unfrozen_modules" in state


def saved_strategy(checkpoint: Mapping[str, Any]) -> StrategyState | None:
    """The strategy state in a Lightning checkpoint; for a plain Lightning fine-tuning callback, a
    state that holds only its callback key as ``strategy``; None without a fine-tuning callback."""
    callbacks = checkpoint.get("callbacks", {})
    for state in callbacks.values():
        if StrategyState.is_ours(state):
            return StrategyState.from_dict(state)
    for key, state in callbacks.items():
        if isinstance(state, Mapping) and "internal_optimizer_metadata" in state:
            return StrategyState(strategy=str(key))
    return None


def option_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(option, saved value, current value)`` for each option both record and that differs, in order."""
    return [(name, saved[name], value) for name, value in current.items() if name in saved and saved[name] != value]


def describe_option_differences(source: str, strategy: str, differences: list[tuple[str, Any, Any]]) -> str:
    """The message of a resume refused for ``differences`` (see :func:`option_differences`)."""
    listed = "; ".join(f"{name}: saved {old!r}, now {new!r}" for name, old, new in differences)
    return (
        f"{source} was written by {strategy} with other options than this run's ({listed}). Resuming would "
        "give the optimizer state, param groups and unfreezes of one setup to another, and parts that should "
        "train would not. Resume with the saved options, or start a new fit from its weights, knowingly: "
        "pass ckpt_path=None and load them first, with model.load_state_dict(torch.load(path, "
        "weights_only=True)['state_dict'], strict=False)."
    )


def group_layout(optimizer: Any, names: Mapping[int, str]) -> list[dict[str, Any]]:
    """The optimizer's param groups by parameter name (``names`` maps ``id(param)`` to it), as Lightning's
    ``BaseFinetuning`` stores them to rebuild the groups on resume."""
    return [
        {
            **{key: value for key, value in group.items() if key != "params"},
            "params": [names[id(p)] for p in group["params"]],
        }
        for group in optimizer.param_groups
    ]
