"""WiSE-FT (Wortsman et al., CVPR 2022): interpolate the fine-tuned weights with the pretrained ones.

``theta(a) = (1 - a) * theta0 + a * theta``, where ``theta0`` are the pretrained modules as they were
when the fit started and ``theta`` the fine-tuned weights: ``a = 0`` is the pretrained backbone,
``a = 1`` the fine-tuned one. :func:`wise_ft` validates ``theta(a)`` for each ``a`` with Lightning's
own validation loop (``trainer.validate``), keeps the best ``a`` on the validation metric and leaves
the model at ``theta(a)``; a single ``a`` is a fixed ``a``. The :class:`WiSEFT` callback takes
``theta0`` when the fit starts and calls :func:`wise_ft` when it ends.

What is interpolated:

* the pretrained modules' parameters and floating-point buffers: BatchNorm running statistics are
  interpolated like the weights (no pass over the data); integer buffers (``num_batches_tracked``)
  keep their fine-tuned values;
* not the head, nor any other module outside ``theta0``: a new head has no pretrained value, so it
  keeps its fine-tuned weights for every ``a``.

The end points are exact copies: ``a = 0`` puts back ``theta0`` bitwise and ``a = 1`` the fine-tuned
weights. Ties go to the larger ``a``, the one closer to the fine-tuned model. Under DDP every rank
validates and rank 0's choice is broadcast.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from rich.table import Table
from typing_extensions import override

from finetune_strategies.core import distributed
from finetune_strategies.core.start_weights import StartWeights, pretrained_modules
from finetune_strategies.core.triggers import Mode, restore
from finetune_strategies.errors import ConfigurationError, StrategySpecError, StrategySpecTypeError
from finetune_strategies.validation import check_names

DEFAULT_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


def check_alphas(alphas: Any) -> tuple[float, ...]:
    """``alphas`` as a non-empty tuple of distinct floats in [0, 1]."""
    values = (alphas,) if isinstance(alphas, (int, float)) and not isinstance(alphas, bool) else alphas
    if not isinstance(values, (tuple, list)) or not values:
        raise StrategySpecTypeError(f"`alphas` must be a number or a list of numbers in [0, 1], got {alphas!r}.")
    checked = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise StrategySpecError(
                f"every a in `alphas` must be in [0, 1] (0: pretrained, 1: fine-tuned), got {value!r} in {alphas!r}."
            )
        checked.append(float(value))
    if len(set(checked)) != len(checked):
        raise StrategySpecError(f"`alphas` lists a value twice: {alphas!r}.")
    return tuple(checked)


def interpolate(
    start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor], a: float
) -> dict[str, torch.Tensor]:
    """``(1 - a) * start + a * end`` for every floating-point tensor of ``start``; others take ``end``'s.
    ``a = 0`` and ``a = 1`` return exact copies of ``start`` and ``end``."""
    mixed = {}
    for name, first in start.items():
        last = end[name]
        if a == 1.0 or not first.is_floating_point():
            mixed[name] = last.detach().clone()
        elif a == 0.0:
            mixed[name] = first.detach().to(last.device).clone()
        else:
            mixed[name] = torch.lerp(first.detach().to(last), last.detach(), a)
    return mixed


@dataclass(frozen=True)
class WiSEFTResult:
    """The validation metrics of each ``a`` (``None`` where nothing was validated) and the chosen ``a``."""

    alphas: tuple[float, ...]
    metrics: list[dict[str, float] | None]
    monitor: str
    best: float

    @property
    def scores(self) -> list[float | None]:
        """``monitor`` for each ``a``."""
        return [None if m is None else m.get(self.monitor) for m in self.metrics]

    def table(self) -> Table:
        """A rich table: one row per ``a``, with every validation metric; the chosen row marked."""
        names = sorted({key for m in self.metrics if m for key in m}, key=lambda k: (k != self.monitor, k))
        table = Table(title="WiSE-FT", caption="theta(a) = (1 - a) * theta0 + a * theta")
        table.add_column("a", justify="right")
        for name in names:
            table.add_column(name, justify="right")
        table.add_column("chosen")
        for a, metrics in zip(self.alphas, self.metrics, strict=True):
            values = [f"{metrics[n]:.4g}" if metrics and n in metrics else "-" for n in names]
            table.add_row(f"{a:g}", *values, "<-" if a == self.best else "")
        return table


def _pick(alphas: Sequence[float], scores: Sequence[float], mode: Mode) -> float:
    """The best ``a``; ties go to the larger ``a``; NaN scores never win."""
    sign = 1.0 if mode == "max" else -1.0
    ranked = [(sign * s, a) for a, s in zip(alphas, scores, strict=True) if not math.isnan(s)]
    if not ranked:
        raise ConfigurationError(f"WiSE-FT: every validation score is NaN ({list(scores)}); nothing to choose from.")
    return max(ranked)[1]


def _validate(trainer: pl.Trainer, model: pl.LightningModule, datamodule: Any, dataloaders: Any) -> dict[str, float]:
    outputs = trainer.validate(model, dataloaders=dataloaders, datamodule=datamodule, verbose=False)
    merged: dict[str, float] = {}
    for output in outputs:
        merged.update({key: float(value) for key, value in output.items()})
    return merged


def wise_ft(
    trainer: pl.Trainer,
    model: pl.LightningModule,
    theta0: Mapping[str, torch.Tensor],
    alphas: float | Sequence[float] = DEFAULT_ALPHAS,
    *,
    monitor: str = "val_acc",
    mode: Mode = "max",
    datamodule: pl.LightningDataModule | None = None,
    dataloaders: Any = None,
    validate: bool = True,
    verbose: bool = True,
) -> WiSEFTResult:
    """Interpolate ``model`` toward ``theta0`` and keep the best ``a`` (see the module docstring).

    Args:
        trainer: The trainer whose ``validate`` evaluates each ``a`` (the one that fit ``model`` will do).
        model: The fine-tuned model; left at ``theta(a)`` for the chosen ``a``.
        theta0: The pretrained weights, by their names in ``model.state_dict()`` (e.g. the backbone's
            entries of a model freshly loaded from the same pretrained source). Entries of ``model``
            that ``theta0`` leaves out (a new head) keep their fine-tuned values.
        alphas: The values of ``a`` to try, or one fixed ``a``.
        monitor: The validation metric that chooses ``a``; ``mode`` says whether higher (``"max"``) or lower
            (``"min"``) is better.
        datamodule: Passed to ``trainer.validate`` (or ``dataloaders``); without either, the data of the
            trainer's last fit (its datamodule, else its validation dataloaders).
        validate: With a single ``a``, ``False`` sets ``theta(a)`` without validating it.
        verbose: Print the table (rank 0).

    Raises:
        ConfigurationError: ``theta0`` does not fit ``model``, or validation does not log ``monitor``.
    """
    alphas = check_alphas(alphas)
    if mode not in ("min", "max"):
        raise StrategySpecError(f"`mode` must be 'min' or 'max', got {mode!r}.")
    current: dict[str, torch.Tensor] = dict(model.named_parameters())
    current.update(model.named_buffers())
    unknown = sorted(set(theta0) - set(current))
    shapes = sorted(n for n in theta0 if n in current and current[n].shape != theta0[n].shape)
    if unknown or shapes:
        raise ConfigurationError(
            f"WiSE-FT: theta0 does not fit {type(model).__name__}: unknown entries {unknown[:3]}, other shapes "
            f"{shapes[:3]}. Give theta0 by the model's parameter and buffer names (its state_dict() keys), from "
            "the same architecture."
        )
    if datamodule is None and dataloaders is None:  # the data of the trainer's last fit
        datamodule = trainer.datamodule  # type: ignore[attr-defined]
        dataloaders = None if datamodule is not None else trainer.val_dataloaders
    fine_tuned = {name: current[name].detach().clone() for name in theta0}
    metrics: list[dict[str, float] | None] = [None] * len(alphas)
    best = alphas[0]
    try:
        for index, a in enumerate(alphas if len(alphas) > 1 or validate else ()):
            restore(model, interpolate(theta0, fine_tuned, a))
            logged = metrics[index] = _validate(trainer, model, datamodule, dataloaders)
            if len(alphas) > 1 and monitor not in logged:
                raise ConfigurationError(
                    f"WiSE-FT chooses a on {monitor!r}, which validation did not log. Logged: "
                    f"{', '.join(sorted(logged)) or 'nothing'}. Set monitor= to one of them."
                )
        if len(alphas) > 1:
            scores = [m[monitor] for m in metrics if m is not None]
            best = float(trainer.strategy.broadcast(_pick(alphas, scores, mode), src=0))
    except BaseException:
        restore(model, fine_tuned)  # leave the model as it came
        raise
    restore(model, interpolate(theta0, fine_tuned, best))
    result = WiSEFTResult(alphas, metrics, monitor, best)
    if verbose:
        _print(result)
    return result


@rank_zero_only
def _print(result: WiSEFTResult) -> None:
    Console().print(result.table())


class WiSEFT(pl.Callback):
    """Take the pretrained weights when the fit starts; at its end, interpolate with :func:`wise_ft`.

    Args:
        alphas: The values of ``a`` to try on the validation data, or one fixed ``a``.
        monitor: The validation metric that chooses ``a``.
        mode: ``"max"`` or ``"min"``: whether a higher or a lower ``monitor`` is better.
        attr_names: The pretrained modules; ``None``: the ones the trainer's fine-tuning strategy freezes,
            else ``backbone``.
        verbose: Print the table (rank 0).

    After the fit, :attr:`result` holds the table and the chosen ``a``, and the model holds ``theta(a)``.
    Checkpoints written during the fit hold the fine-tuned weights (``a = 1``) and ``theta0``, so a
    resumed run interpolates with the same ``theta0``. The evaluations are ``trainer.validate`` runs at
    ``on_fit_end``: other callbacks see them as validation runs outside ``fit``; loggers receive their
    metrics.
    """

    def __init__(
        self,
        alphas: float | Sequence[float] = DEFAULT_ALPHAS,
        monitor: str = "val_acc",
        mode: Mode = "max",
        attr_names: str | Sequence[str] | None = None,
        verbose: bool = True,
    ) -> None:
        self.alphas = check_alphas(alphas)
        if not isinstance(monitor, str) or not monitor:
            raise StrategySpecTypeError(f"`monitor` must be the name of a validation metric, got {monitor!r}.")
        if mode not in ("min", "max"):
            raise StrategySpecError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        self.monitor = monitor
        self.mode: Mode = mode
        self.attr_names = None if attr_names is None else check_names("attr_names", attr_names)
        self.verbose = verbose
        self.start = StartWeights(buffers=True)
        self.result: WiSEFTResult | None = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            distributed.refuse_engines(
                trainer,
                type(self).__name__,
                "it interpolates the pretrained weights in place after the fit and validates each mix with "
                "trainer.validate, which needs the module's weights whole on every rank and the ones the engine "
                "trained; FSDP and ZeRO-3 partition them, and ZeRO-1/2 train their own fp32 copies.",
                "Train with DDP or one device, or call wise_ft() on the trained model in one process.",
            )
            self.start = StartWeights(buffers=True)
            self.result = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pretrained = pretrained_modules(trainer, pl_module, self.attr_names)
        self.start.take(pl_module, pretrained, type(self).__name__, resumed=trainer.ckpt_path is not None)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted or not self.start.taken:
            return
        state = (trainer.state.fn, trainer.state.status, trainer.state.stage)
        has_data = trainer.datamodule is not None or bool(trainer.val_dataloaders)  # type: ignore[attr-defined]
        single = len(self.alphas) == 1
        if not single and not has_data:
            raise ConfigurationError(
                f"WiSEFT chooses a among {list(self.alphas)} on validation data, but this fit has none. Give the fit "
                "validation data, or a single a (e.g. WiSEFT(alphas=0.5))."
            )
        try:
            self.result = wise_ft(
                trainer,
                pl_module,
                self.start.tensors,
                self.alphas,
                monitor=self.monitor,
                mode=self.mode,
                validate=has_data,
                verbose=self.verbose,
            )
        finally:  # the fit's own teardown follows, as a fit's
            trainer.state.fn, trainer.state.status, trainer.state.stage = state

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"theta0": self.start.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start.load_state_dict(state_dict.get("theta0"), type(self).__name__)
