"""Run a staged transfer-learning config: load pretrained weights, add heads, then one fit per stage.

Before anything trains, the whole config is checked against the model and data: module names,
data-module settings, the pretrained weights' names and shapes. Then each stage is its own
``Trainer.finetune`` fit that starts from the previous stage's final weights, with:

* the stage's frozen modules frozen by the core :class:`~finetune_strategies.Freeze` callback
  (:class:`~finetune_strategies.NoFreeze` when it freezes nothing); everything else trains;
* a new optimizer (and scheduler) from the stage's spec, or the model's own ``configure_optimizers``;
  with ``reset_optimizer: false`` it starts from the previous stage's per-parameter state;
* its own Trainer arguments, data-module settings and replay;
* a checkpoint, ``<output_dir>/<stage name>/final.ckpt``, and a record in ``transfer_state.json``.

A rerun with the same output folder skips the stages that finished (same settings, checkpoint
present) and starts again at the first one that did not, from the previous stage's checkpoint.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only
from torch.nn.modules.batchnorm import _BatchNorm
from typing_extensions import override

from finetune_strategies.checkpointing.weights import torch_load
from finetune_strategies.core.callback import FinetuningStrategy
from finetune_strategies.errors import StageError, TransferConfigError
from finetune_strategies.recipes.monitor import TrainableMonitor
from finetune_strategies.strategies.builtins import Freeze, NoFreeze
from finetune_strategies.trainer import Trainer
from finetune_strategies.transfer.config import TransferConfig
from finetune_strategies.transfer.heads import add_readout_heads
from finetune_strategies.transfer.matching import MatchReport, load_pretrained
from finetune_strategies.transfer.record import Progress, StageResult
from finetune_strategies.transfer.stage_optimizers import OptimizerMemory, stage_optimizers
from finetune_strategies.transfer.stages import (
    DataModuleSource,
    ReplaySource,
    StageData,
    StagePlan,
    plan_stages,
)

log = logging.getLogger("finetune_strategies.transfer")
CHECKPOINT_NAME = "final.ckpt"


@rank_zero_only
def _info(message: str) -> None:
    log.info(message)


@dataclass(frozen=True)
class TransferResult:
    """The outcome of :func:`run_transfer_learning`. ``model`` holds the last stage's weights."""

    model: pl.LightningModule
    stages: list[StageResult]
    match: MatchReport | None
    new_head_names: list[str]
    output_dir: Path


class _StageMonitor(TrainableMonitor):
    """Measures and logs what a stage trains once its modules are frozen and its optimizer is built
    (and records it per epoch); hands optimizer state from one stage to the next when a stage keeps it."""

    def __init__(self, plan: StagePlan, num_stages: int, memory: OptimizerMemory | None) -> None:
        super().__init__(log=False)
        self.plan = plan
        self.num_stages = num_stages
        self.memory = memory
        self.trainable = 0
        self.frozen = 0
        self.param_names: list[str] = []
        self.optimizer_class = ""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        start = self.measure(trainer, pl_module)
        self.trainable, self.frozen = start.trainable_params, start.frozen_params
        frozen = ", ".join(self.plan.frozen) or "nothing"
        bn = " (BatchNorm kept trainable)" if self.plan.frozen and self.plan.settings.train_bn else ""
        kept = ""
        if not self.plan.settings.reset_optimizer:
            if self.memory is None:
                raise StageError(f"Stage '{self.plan.name}' keeps the optimizer state, but none was saved.")
            names = {id(p): n for n, p in pl_module.named_parameters()}
            kept = f"; optimizer state kept for {self.memory.apply(trainer.optimizers[0], names)} tensors"
        _info(
            f"Stage {self.plan.index + 1}/{self.num_stages} '{self.plan.name}': frozen {frozen}{bn}; "
            f"training {self.trainable:,} of {self.trainable + self.frozen:,} parameters{kept}."
        )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        names = {id(p): n for n, p in pl_module.named_parameters()}
        self.param_names = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        self.optimizer_class = type(optimizer).__name__
        self.memory = OptimizerMemory.capture(optimizer, names)

    @override
    def state_dict(self) -> dict[str, Any]:
        # how the checkpoint's optimizer state is numbered, for a resumed stage that keeps it
        return {"param_names": self.param_names, "optimizer_class": self.optimizer_class}


class _TrainState:
    """``requires_grad`` of every parameter and the BatchNorm flags that freezing changes."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.params = [(p, p.requires_grad) for p in model.parameters()]
        self.norms = [(m, m.track_running_stats) for m in model.modules() if isinstance(m, _BatchNorm)]

    def restore(self) -> None:
        for param, requires_grad in self.params:
            param.requires_grad_(requires_grad)
        for module, track in self.norms:
            module.track_running_stats = track


def _weights_context(config: TransferConfig) -> dict[str, Any]:
    """What enters every stage fingerprint about the starting weights."""
    context: dict[str, Any] = {
        "pre_trained_model_path": config.pre_trained_model_path,
        "modules_to_match": config.modules_to_match,
        "new_heads": None if config.new_heads is None else repr(config.new_heads),
        "seed": config.seed,
    }
    if config.pre_trained_model_path is not None and os.path.isfile(config.pre_trained_model_path):
        stat = os.stat(config.pre_trained_model_path)
        context["weights_file"] = [stat.st_size, stat.st_mtime_ns]
    return context


def _load_stage(model: pl.LightningModule, checkpoint: str, weights_only: bool) -> OptimizerMemory | None:
    """Load a finished stage's weights into ``model``; return its optimizer state, if recorded.

    The file lies in the output folder, where anyone who can write there could have put it: it is
    read with ``weights_only=True`` unless the config says ``weights_only: false``.
    """
    saved = torch_load(
        checkpoint,
        f"stage checkpoint {checkpoint!r}",
        weights_only=weights_only,
        error=StageError,
        opt_in="If you trust the files in the output folder, set `weights_only: false` in the transfer config, "
        "or rerun with resume=False (`--resume false`) to redo the stage.",
    )
    model.load_state_dict(saved["state_dict"])
    monitor = saved.get("callbacks", {}).get(_StageMonitor.__qualname__)
    if not monitor or not monitor.get("param_names"):
        return None
    return OptimizerMemory.from_checkpoint(saved, monitor["param_names"], monitor["optimizer_class"])


def _metrics(trainer: pl.Trainer) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


def _run_stage(
    plan: StagePlan,
    num_stages: int,
    model: pl.LightningModule,
    data: StageData,
    output_dir: Path,
    callbacks: Sequence[pl.Callback],
    seed: int | None,
    memory: OptimizerMemory | None,
) -> tuple[StageResult, OptimizerMemory | None]:
    if seed is not None:
        pl.seed_everything(seed + plan.index, workers=True, verbose=False)
    settings = plan.settings
    datamodule = data.build(settings)
    strategy: FinetuningStrategy = (
        Freeze(attr_names=list(plan.frozen), train_bn=settings.train_bn) if plan.frozen else NoFreeze()
    )
    monitor = _StageMonitor(plan, num_stages, memory)
    kwargs = dict(settings.trainer)
    stage_dir = output_dir / plan.name
    kwargs.setdefault("default_root_dir", str(stage_dir))
    kwargs["callbacks"] = [*callbacks, *kwargs.get("callbacks", []), monitor]
    trainer = Trainer(**kwargs)
    with stage_optimizers(model, settings.optimizer, settings.scheduler):
        trainer.finetune(model, datamodule, strategy=strategy)
    if trainer.interrupted or trainer.state.status != TrainerStatus.FINISHED:
        raise StageError(f"Stage '{plan.name}' did not finish (status {trainer.state.status.value}).")
    stage_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = stage_dir / CHECKPOINT_NAME
    temporary = stage_dir / (CHECKPOINT_NAME + ".tmp")
    trainer.save_checkpoint(temporary, weights_only=False)
    if trainer.is_global_zero:
        os.replace(temporary, checkpoint)
    result = StageResult(
        index=plan.index,
        name=plan.name,
        frozen=plan.frozen,
        trainable_params=monitor.trainable,
        frozen_params=monitor.frozen,
        checkpoint=str(checkpoint),
        fingerprint=plan.fingerprint,
        metrics=_metrics(trainer),
    )
    return result, monitor.memory


def run_transfer_learning(
    config: TransferConfig | Mapping[str, Any] | str | os.PathLike[str],
    model: pl.LightningModule,
    datamodule: DataModuleSource = None,
    *,
    replay_data: ReplaySource = None,
    callbacks: Sequence[pl.Callback] = (),
    output_dir: str | os.PathLike[str] | None = None,
    resume: bool = True,
) -> TransferResult:
    """Run every stage of ``config`` on ``model``; see the module docstring.

    Args:
        config: A :class:`TransferConfig`, a dict of the same form, or a YAML/JSON file path.
        model: The new model. Pretrained weights are copied into it, and it is trained in place.
        datamodule: A data-module instance (stage ``datamodule`` settings are set as its attributes),
            a factory called with the merged settings for every stage, or ``None`` if the model
            provides its own dataloaders.
        replay_data: Pretraining data (a Dataset or data module) for stages with a ``replay`` fraction.
        callbacks: Extra callbacks for every stage's Trainer.
        output_dir: Overrides ``config.output_dir``.
        resume: Reuse the stages an earlier run in the same output folder finished. ``False`` redoes all.

    Raises:
        TransferConfigError: a config that does not fit the model or data (before any training).
        WeightMatchError: pretrained weights that cannot be read or do not match (before any training).
        StageError: a stage that did not finish.
    """
    config = TransferConfig.load(config)
    if not isinstance(model, pl.LightningModule):
        raise TransferConfigError(f"model must be a LightningModule, got {type(model).__name__}.")
    out = Path(output_dir if output_dir is not None else config.output_dir)
    match = None
    if config.pre_trained_model_path is not None:
        match = load_pretrained(
            model, config.pre_trained_model_path, config.modules_to_match, weights_only=config.weights_only
        )
        _info(str(match))
    heads = config.new_heads
    new_heads = []
    if heads is not None:
        new_heads = add_readout_heads(model, heads.head, heads.num_heads, heads.scale_factor, seed=heads.seed)
        _info(f"Added read-out heads {new_heads} (scale_factor={heads.scale_factor}).")
    data = StageData(datamodule, replay_data)
    plans = plan_stages(config, model, data, new_heads, _weights_context(config))

    progress = Progress(out)
    done = progress.finished(plans) if resume else []
    is_zero = getattr(rank_zero_only, "rank", 0) == 0
    if is_zero:
        progress.reset(done)
    memory = None
    if done:
        memory = _load_stage(model, done[-1].checkpoint, config.weights_only)
        _info(f"Resuming in {str(out)!r}: reusing finished stage(s) {[r.name for r in done]}.")
    results = list(done)
    state = _TrainState(model)
    try:
        for plan in plans[len(done) :]:
            state.restore()
            result, memory = _run_stage(plan, len(plans), model, data, out, callbacks, config.seed, memory)
            if is_zero:
                progress.add(result)
            results.append(result)
    finally:
        state.restore()
        data.restore()
    return TransferResult(model=model, stages=results, match=match, new_head_names=new_heads, output_dir=out)
