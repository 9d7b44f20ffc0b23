"""How far fine-tuning moves each layer of the pretrained modules from where the fit started.

For each layer (in the sense of ``layer_unit``, see :func:`~finetune_strategies.model.layers.list_layers`),
the relative distance ``||w - w0|| / ||w0||`` over its parameters, ``w0`` being the weights at the
fit's start (:class:`~finetune_strategies.core.start_weights.StartWeights`). :class:`DriftMonitor` logs it
at the end of every training epoch as ``drift/<layer>`` and keeps the history; :func:`plot_drift`
draws it. It keeps one copy of the pretrained parameters, written into checkpoints with the history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from finetune_strategies.core import distributed
from finetune_strategies.core.start_weights import StartWeights, pretrained_modules
from finetune_strategies.errors import StrategySpecError, require
from finetune_strategies.model.batchnorm import own_parameters
from finetune_strategies.model.layers import LAYER_UNITS, Layer, LayerUnit, list_layers
from finetune_strategies.validation import check_bool, check_names


def layer_drift(pl_module: nn.Module, layers: Sequence[Layer], start: StartWeights) -> dict[str, float]:
    """``||w - w0|| / ||w0||`` per layer (0 for a layer whose start weights are all zero and unchanged)."""
    names = {id(p): n for n, p in pl_module.named_parameters()}
    drift = {}
    with torch.no_grad():
        for layer in layers:
            moved = origin = 0.0
            for param in own_parameters(layer.modules, train_bn=True):
                w0 = start.get(names[id(param)], param)
                moved += float((param - w0).double().pow(2).sum())
                origin += float(w0.double().pow(2).sum())
            drift[layer.name] = (moved / origin) ** 0.5 if origin else (float("inf") if moved else 0.0)
    return drift


class DriftMonitor(pl.Callback):
    """Log the relative distance of each pretrained layer from its start weights, every epoch.

    Args:
        layer_unit: What a layer is; ``None``: the fine-tuning strategy's ``layer_unit`` (its layers),
            else ``"blocks"``.
        attr_names: The pretrained modules; ``None``: the ones the trainer's fine-tuning strategy freezes,
            else ``backbone``.
        log: Log ``drift/<layer>`` through the LightningModule (to the trainer's loggers).

    :attr:`history` holds one ``{layer: drift}`` per finished training epoch.
    """

    def __init__(
        self, layer_unit: LayerUnit | None = None, attr_names: str | Sequence[str] | None = None, log: bool = True
    ) -> None:
        if layer_unit is not None and layer_unit not in LAYER_UNITS:
            raise StrategySpecError(f"`layer_unit` must be one of {list(LAYER_UNITS)}, got {layer_unit!r}.")
        self.layer_unit = layer_unit
        self.attr_names = None if attr_names is None else check_names("attr_names", attr_names)
        self.log = check_bool("log", log)
        self.start = StartWeights()
        self.layers: list[Layer] = []
        self.history: list[dict[str, float]] = []

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            distributed.refuse_engines(
                trainer,
                type(self).__name__,
                "it sums each layer's distance from its start weights over the module's weights, which needs them "
                "whole on every rank and the ones the engine trains; FSDP and ZeRO-3 partition them, and ZeRO-1/2 "
                "train their own fp32 copies.",
                "Train with DDP or one device, or remove DriftMonitor.",
            )
            self.start, self.history = StartWeights(), []

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pretrained = pretrained_modules(trainer, pl_module, self.attr_names)
        strategy = next((c for c in trainer.callbacks if hasattr(c, "backbone_layers")), None)  # type: ignore[attr-defined]
        if strategy is not None and self.attr_names is None and self.layer_unit in (None, strategy.layer_unit):
            self.layers = strategy.backbone_layers(pl_module)
        else:
            self.layers = list_layers(
                pretrained.roots, self.layer_unit or "blocks", leave_out=[m for _, m in pretrained.head]
            )
        self.start.take(pl_module, pretrained, type(self).__name__, resumed=trainer.ckpt_path is not None)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        drift = layer_drift(pl_module, self.layers, self.start)
        self.history.append(drift)
        if self.log:
            for name, value in drift.items():
                pl_module.log(f"drift/{name}", value, on_step=False, on_epoch=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"start": self.start.state_dict(), "history": [dict(h) for h in self.history]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start.load_state_dict(state_dict.get("start"), type(self).__name__)
        self.history = [dict(h) for h in state_dict.get("history", [])]


def plot_drift(
    runs: Mapping[str, Sequence[Mapping[str, float]]], path: str | Path, *, title: str = "Drift per layer"
) -> Path:
    """Draw each run's drift on a log scale: per layer after the last epoch (left), and the mean over the
    layers per epoch (right). ``runs`` maps a run's name to its history (:attr:`DriftMonitor.history`).
    Needs matplotlib (the ``demo`` extra)."""
    matplotlib = require("matplotlib", "demo", what="plot_drift")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: history for name, history in runs.items() if history}
    if not runs:
        raise StrategySpecError("plot_drift needs at least one run with a drift history.")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for index, (name, history) in enumerate(runs.items()):
        colour = plt.get_cmap("tab10")(index % 10)
        last = history[-1]
        left.plot(range(len(last)), list(last.values()), marker="o", color=colour, label=name)
        mean = [sum(epoch.values()) / len(epoch) for epoch in history]
        right.plot(range(1, len(mean) + 1), mean, marker="o", markersize=3, color=colour, label=name)
    layers = list(next(iter(runs.values()))[-1])
    left.set_xticks(range(len(layers)), [_short(layer) for layer in layers], rotation=30, ha="right")
    left.set_ylabel("||w - w0|| / ||w0|| after the last epoch")
    left.set_title("per layer, bottom to top")
    right.set_xlabel("epochs trained")
    right.set_ylabel("mean over the layers")
    right.set_title("per epoch")
    for axis in (left, right):
        axis.set_yscale("log", nonpositive="mask")  # runs differ by orders of magnitude; 0 (frozen) is not drawn
        axis.grid(alpha=0.3, which="both")
    left.legend(fontsize=8)
    fig.suptitle(title, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    plt.close(fig)
    return target


def _short(layer: str) -> str:
    """``backbone.layer4.0`` -> ``layer4.0``: the root's name adds nothing on an axis."""
    return layer.split(".", 1)[1] if "." in layer else layer
