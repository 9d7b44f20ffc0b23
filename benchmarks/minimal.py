"""Baseline (a): a hand-written PyTorch loop doing the same math as a strategy's phase, with no
framework around it. This is the practical floor."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from benchmarks.config import BenchConfig
from benchmarks.lockstep import HandOver
from benchmarks.measure import Instruments, OptimizerState, Sample
from benchmarks.records import PhaseRecord
from benchmarks.variants import MinimalMode, Variant
from benchmarks.workload import BenchModel, make_loader, make_optimizer


def _trainable(model: BenchModel, mode: MinimalMode) -> list[nn.Parameter]:
    model.train()
    if mode == "full":
        return list(model.parameters())
    model.backbone.requires_grad_(False)
    if mode == "frozen":
        model.backbone.eval()
        return list(model.head.parameters())
    norms = [p for m in model.backbone.modules() if isinstance(m, _BatchNorm) for p in m.parameters(recurse=False)]
    for param in norms:
        param.requires_grad_(True)
    return list(model.head.parameters()) + norms


def run_minimal(
    variant: Variant, config: BenchConfig, tools: Instruments, hand_over: HandOver | None = None
) -> PhaseRecord:
    """Train ``config.warmup + config.steps`` steps; time each from batch-on-device to step done.

    ``hand_over``, if given, is called after every step (in a lockstep ring, see :mod:`benchmarks.lockstep`).
    """
    assert variant.mode is not None
    mode, device = variant.mode, tools.device
    if hand_over is None:  # alone: memory is measured; in a ring it is shared, and a trim would disturb the others
        tools.memory.begin_variant()
    model = BenchModel(config, variant.backbone).to(device)
    params = _trainable(model, mode)
    optimizer = make_optimizer(params, config.lr)
    batches = iter(make_loader(config, config.steps_per_epoch, backbone=variant.backbone))
    record = PhaseRecord(mode, variant.floors[0], config.quiet_share, start_bytes=tools.memory.start_bytes)
    last: Sample | None = None
    previous = 0.0
    for index in range(config.steps_per_epoch):
        x, y = (t.to(device) for t in next(batches))
        started = tools.start()
        if last is not None and hand_over is None:  # in a ring, other runs' steps come between
            last.period_s = started.wall - previous
        previous = started.wall
        optimizer.zero_grad(set_to_none=True)
        if mode == "frozen":
            with torch.no_grad():
                features = model.backbone(x)
            logits = model.head(features)
        else:
            logits = model(x)
        torch.autograd.backward(nn.functional.cross_entropy(logits, y))
        optimizer.step()
        sample = tools.stop(started)
        last = sample if index >= config.warmup else None
        if last is not None:
            record.samples.append(last)
        if hand_over is not None:
            hand_over()
    record.optimizer = OptimizerState.of(optimizer)
    record.trainable_params = sum(p.numel() for p in params)
    record.peak_bytes = tools.memory.peak()
    return record
