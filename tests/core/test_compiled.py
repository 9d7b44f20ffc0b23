"""Strategies on ``torch.compile``\\ d models: what phases unfreeze trains, the run stays compiled to the end,
resume and DDP behave as eager runs do, and a fall back to eager is reported (issue 21).

Every model here is compiled with ``backend="aot_eager"``: dynamo captures the graph and AOTAutograd traces
forward and backward exactly as with inductor, with the same guards and therefore the same recompiles at a
phase change, but the graph runs on eager kernels. Inductor would compile C++ kernels on this CPU, minutes per
graph; the benchmark (``benchmarks/compile_bench.py``) runs inductor.

Compiled weights are compared with eager ones within ``ATOL``: aot_eager runs the decomposed graph AOTAutograd
traced, whose float32 operations may be ordered or fused differently from eager (e.g. ``addmm`` against
``mm`` then ``add``), so results differ by float32 rounding, about ``1e-7`` relative per operation; a few
dozen SGD steps on weights of order 1 stay far below ``1e-5``, while a parameter that did not train, or
trained one step late, is off by at least the lr times its gradient (``1e-3`` and more here).
"""

from __future__ import annotations

import itertools
import json
import logging
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch._dynamo
from conftest import QUIET_TRAINER
from ddp_helpers import run_script
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetune_strategies import CompileFallbackError, FinetuningStrategy, Trainer, describe_schedule, resolve_strategy
from finetune_strategies.core.compiled import (
    GRAPHS_PER_CHANGE,
    CompiledRegion,
    compile_module,
    compile_option,
    find_compiled,
)
from finetune_strategies.errors import ModelConfigError

ATOL = 1e-5
BACKEND = {"backend": "aot_eager"}
HELPERS = Path(__file__).resolve().parents[1] / "helpers"


@pytest.fixture(autouse=True)
def dynamo_config() -> Iterator[None]:
    """Every test leaves dynamo's limits as it found them (a test that fails mid-fit skips the teardown)."""
    saved = {k: getattr(torch._dynamo.config, k) for k in ("recompile_limit", "accumulated_recompile_limit")}
    yield
    for key, value in saved.items():
        setattr(torch._dynamo.config, key, value)


class Net(pl.LightningModule):
    """A backbone of ``depth`` Linear blocks and a head, trained by SGD, validated every epoch."""

    def __init__(self, depth: int = 4, width: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(*[nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth)])
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1, momentum=0.9)


_FRESH = itertools.count()


def fresh_net(depth: int = 4) -> Net:
    """A ``Net`` whose ``forward`` is a code object of its own. Dynamo keeps graphs per code object, so every
    ``Net`` shares the graphs that earlier tests compiled, and reuses them where the guards pass; a test that
    counts graphs or forces a recompile needs code that nothing compiled before."""
    number = next(_FRESH)
    code = Net.forward.__code__.replace(co_name=f"forward_{number}")
    forward = types.FunctionType(code, Net.forward.__globals__, f"forward_{number}")
    cls = type(f"FreshNet{number}", (Net,), {"forward": forward})
    return cls(depth)  # type: ignore[no-any-return]


def loader() -> DataLoader[Any]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=generator)
    return DataLoader(TensorDataset(x, (x[:, 0] * x[:, 1] > 0).long()), batch_size=8)


class Unfrozen(pl.Callback):
    """After the strategy's ``on_train_epoch_start``: which parameters became trainable this epoch and their
    values; after the epoch's first step: which of them did not change."""

    def __init__(self) -> None:
        self.before: set[str] = set()
        self.snapshot: dict[str, torch.Tensor] = {}
        self.unchanged: dict[int, list[str]] = {}
        self.newly: dict[int, list[str]] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before = {n for n, p in pl_module.named_parameters() if p.requires_grad}

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        now = {n for n, p in pl_module.named_parameters() if p.requires_grad}
        new = sorted(now - self.before) if trainer.current_epoch else sorted(now)
        self.before = now
        self.snapshot = {n: p.detach().clone() for n, p in pl_module.named_parameters() if n in new}
        if new:
            self.newly[trainer.current_epoch] = new

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if args[-1] == 0 and self.snapshot:
            params = dict(pl_module.named_parameters())
            self.unchanged[trainer.current_epoch] = [
                n for n, value in self.snapshot.items() if torch.equal(params[n].detach(), value)
            ]
            self.snapshot = {}


def fit(
    spec: Any, compiled: bool, epochs: int = 4, depth: int = 4, fresh: bool = False, **trainer: Any
) -> tuple[Net, Any, Unfrozen]:
    model = fresh_net(depth) if fresh else Net(depth)
    if compiled:
        compile_module(model, BACKEND)
    strategy = resolve_strategy(spec)
    watch = Unfrozen()
    options = {**QUIET_TRAINER, "limit_val_batches": 1, **trainer}
    pl.Trainer(max_epochs=epochs, callbacks=[strategy, watch], **options).fit(model, loader(), loader())
    return model, strategy, watch


BUILT_INS: dict[str, Any] = {
    "no_freeze": "no_freeze",
    "freeze": "freeze",
    "freeze_unfreeze": ("freeze_unfreeze", 1),
    "lp_ft": ("lp_ft", 1),  # with the feature cache
    "lp_ft_uncached": {"strategy": "lp_ft", "probe_epochs": 1, "cache_features": False},
    "unfreeze_milestones": ("unfreeze_milestones", ((1, 2), 1)),
    "gradual_unfreeze": ("gradual_unfreeze", 1),
    "gradual_unfreeze_decay": {"strategy": "gradual_unfreeze", "start_epoch": 1, "layer_lr_decay": 0.5},
    "phases": {"strategy": "phases", "phases": [{"epoch": 1, "modules": ["backbone.3"]}, {"epoch": 2}]},
    "l2_sp": {"strategy": "freeze_unfreeze", "unfreeze_epoch": 1, "l2_sp": 0.5, "l2_sp_beta": 0.1},
    "plateau": {"strategy": "gradual_unfreeze", "start_epoch": 3, "monitor": "val_loss", "patience": 1},
    "lora": {"strategy": "lora", "r": 2, "unfreeze_epoch": 2},
}


@pytest.mark.parametrize("name", sorted(BUILT_INS))
def test_what_a_phase_unfreezes_trains_at_once_and_matches_eager(name: str) -> None:
    spec = BUILT_INS[name]
    if name == "lora":
        pytest.importorskip("peft")
    eager, _, eager_watch = fit(spec, compiled=False)
    model, strategy, watch = fit(spec, compiled=True)
    assert isinstance(strategy, FinetuningStrategy)
    report = strategy.compile_report
    assert report.regions == [CompiledRegion("", "module.compile()")]
    assert report.fallbacks == []
    assert watch.newly == eager_watch.newly  # the same unfreezes at the same epochs
    assert watch.newly, "the strategy trains something"
    # a parameter a phase unfreezes changes in its first step (at epoch 0 LoRA's A matrices do not, in eager
    # runs too: their gradient is zero while B is; peft's initialisation)
    assert all(not unchanged for epoch, unchanged in watch.unchanged.items() if epoch > 0), watch.unchanged
    assert watch.unchanged == eager_watch.unchanged
    assert len(report.phases) == 1 + len([epoch for epoch in watch.newly if epoch > 0])  # "start", then each change
    # at most one graph for training and one for validation; none where an earlier model of the class compiled it
    assert all(p.graphs <= GRAPHS_PER_CHANGE for p in report.phases[1:])
    compiled_state, eager_state = model.state_dict(), eager.state_dict()
    assert compiled_state.keys() == eager_state.keys()  # in-place compile: no _orig_mod. prefix
    for key, value in eager_state.items():
        torch.testing.assert_close(compiled_state[key], value, atol=ATOL, rtol=0, msg=key)


def test_every_compiled_form_is_found() -> None:
    whole, backbone, forward = Net(), Net(), Net()
    compile_module(whole, BACKEND)
    backbone.backbone = torch.compile(backbone.backbone, **BACKEND)  # type: ignore[assignment]
    forward.head.forward = torch.compile(forward.head.forward, **BACKEND)  # type: ignore[method-assign]
    assert find_compiled(whole) == [CompiledRegion("", "module.compile()")]
    assert find_compiled(backbone) == [CompiledRegion("backbone", "torch.compile(module)")]
    assert find_compiled(forward) == [CompiledRegion("head", "torch.compile(module.forward)")]
    assert find_compiled(Net()) == []


@pytest.mark.parametrize("form", ["backbone", "forward"])
def test_a_compiled_backbone_or_forward_trains_what_each_phase_unfreezes(form: str) -> None:
    """``model.backbone = torch.compile(model.backbone)`` (parameters named ``backbone._orig_mod.*``: the anatomy
    sees through it) and ``model.forward = torch.compile(model.forward)``."""
    model = fresh_net()
    if form == "backbone":
        model.backbone = torch.compile(model.backbone, **BACKEND)  # type: ignore[assignment]
    else:
        model.forward = torch.compile(model.forward, **BACKEND)  # type: ignore[method-assign]
    strategy = resolve_strategy(("gradual_unfreeze", 1))
    assert isinstance(strategy, FinetuningStrategy)
    watch = Unfrozen()
    trainer = pl.Trainer(max_epochs=4, callbacks=[strategy, watch], **{**QUIET_TRAINER, "limit_val_batches": 1})
    trainer.fit(model, loader(), loader())
    report = strategy.compile_report
    assert len(report.regions) == 1
    assert report.fallbacks == []
    graphs = [p.graphs for p in report.phases]
    if form == "forward":  # a forward of its own: every graph is new
        assert graphs == [GRAPHS_PER_CHANGE] * 4
    else:  # nn.Sequential.forward: another test's Sequential of this shape may have left graphs to reuse
        assert all(g <= GRAPHS_PER_CHANGE for g in graphs)
    assert sorted(watch.newly) == [0, 1, 2, 3]
    assert all(not unchanged for unchanged in watch.unchanged.values()), watch.unchanged


def test_a_lightning_module_compiled_whole_by_the_trainer_is_found_and_trains() -> None:
    model = Net()
    strategy = resolve_strategy(("gradual_unfreeze", 1))
    assert isinstance(strategy, FinetuningStrategy)
    watch = Unfrozen()
    trainer = pl.Trainer(max_epochs=3, callbacks=[strategy, watch], **{**QUIET_TRAINER, "limit_val_batches": 1})
    trainer.fit(torch.compile(model, **BACKEND), loader(), loader())  # type: ignore[arg-type]
    report = strategy.compile_report
    assert [r.how for r in report.regions] == ["torch.compile(lightning_module), unwrapped by the Trainer"]
    assert report.fallbacks == []
    assert report.recompiles >= 2
    assert all(not unchanged for unchanged in watch.unchanged.values())


def test_twenty_phase_changes_stay_compiled_to_the_end(caplog: pytest.LogCaptureFixture) -> None:
    """More phase changes (20, with validation: 40 graphs) than dynamo's default limit (8) allows."""
    limit = torch._dynamo.config.recompile_limit
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        _, strategy, watch = fit(("gradual_unfreeze", 1), compiled=True, epochs=21, depth=20, fresh=True)
    report = strategy.compile_report
    assert len(report.phases) == 21
    assert [p.graphs for p in report.phases] == [GRAPHS_PER_CHANGE] * 21  # the last phase compiled too
    assert report.recompiles == 20 * GRAPHS_PER_CHANGE
    assert report.recompile_limit is not None
    assert report.recompile_limit >= limit + 20 * GRAPHS_PER_CHANGE
    assert report.fallbacks == []
    assert "recompile_limit" not in caplog.text
    assert torch._dynamo.config.recompile_limit == limit  # put back
    assert all(not unchanged for unchanged in watch.unchanged.values())


class LowerTheLimit(pl.Callback):
    """Someone else lowers dynamo's limit during the fit: the next phase change falls back to eager."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        torch._dynamo.config.recompile_limit = 1


def test_a_forced_fall_back_to_eager_is_reported_with_cause_and_fix() -> None:
    model = fresh_net()
    compile_module(model, BACKEND)
    strategy = resolve_strategy(("gradual_unfreeze", 1))
    assert isinstance(strategy, FinetuningStrategy)
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[strategy, LowerTheLimit()], **{**QUIET_TRAINER, "limit_val_batches": 1}
    )
    with pytest.warns(UserWarning, match=r"recompile_limit was lowered to 1") as record:
        trainer.fit(model, loader(), loader())
    eager = [str(w.message) for w in record if "runs EAGERLY" in str(w.message)]
    assert eager
    assert "Fix: raise torch._dynamo.config.recompile_limit" in eager[0]
    assert strategy.compile_report.phases[-1].graphs == 0  # nothing compiled after the change: eager


def test_strict_compile_stops_the_fit_at_the_fall_back() -> None:
    model = fresh_net()
    compile_module(model, BACKEND)
    strategy = resolve_strategy(("gradual_unfreeze", 1), strict_compile=True)
    trainer = pl.Trainer(
        max_epochs=3, callbacks=[strategy, LowerTheLimit()], **{**QUIET_TRAINER, "limit_val_batches": 1}
    )
    limit = torch._dynamo.config.recompile_limit
    with pytest.raises(CompileFallbackError, match=r"runs EAGERLY.*Fix: raise.*strict_compile=True"):
        trainer.fit(model, loader(), loader())
    assert torch._dynamo.config.recompile_limit == limit  # put back by on_exception


def test_an_eager_model_is_left_alone() -> None:
    limit = torch._dynamo.config.recompile_limit
    _, strategy, _ = fit(("freeze_unfreeze", 1), compiled=False, epochs=2)
    assert strategy.compile_report.regions == []
    assert strategy.compile_report.phases == []
    assert torch._dynamo.config.recompile_limit == limit


def test_the_plan_says_what_the_phase_changes_cost() -> None:
    model = Net()
    plain = describe_schedule(model, ("gradual_unfreeze", 1), max_epochs=6)
    assert plain.recompiles == 4 * GRAPHS_PER_CHANGE
    assert "not compiled; if compiled" in str(plain)
    assert "4 phase change(s) cost 8 recompile(s)" in str(plain)
    compile_module(model, BACKEND)
    compiled = describe_schedule(model, ("gradual_unfreeze", 1), max_epochs=6)
    assert "compiled: the LightningModule (module.compile())" in str(compiled)


@pytest.mark.parametrize(
    ("compile", "kwargs", "message"),
    [
        (True, {"backend": "nope"}, r"torch.compile refused .*Invalid backend"),
        (True, {"mode": "fastest"}, r"torch.compile refused .*mode"),
        (True, {"backendd": "eager"}, r"unknown|does not take.*Allowed keys: .*backend"),
        (True, ["eager"], r"must be a mapping of torch.compile arguments"),
        (False, {"backend": "eager"}, r"compile` is False: set compile=True"),
        ("yes", None, r"`compile` must be True or False"),
    ],
)
def test_bad_compile_options_are_refused(compile: Any, kwargs: Any, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        compile_option(Net(), compile, kwargs)


def test_resume_in_the_middle_of_a_compiled_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    """Stopped after the first unfreeze (epoch 1) with a checkpoint, resumed compiled for the rest."""
    spec = ("unfreeze_milestones", ((1, 2), 1))
    options = {**QUIET_TRAINER, "limit_val_batches": 1, "enable_checkpointing": True}

    def run(epochs: int, ckpt_path: Path | None) -> Net:
        model = compile_module(Net(), BACKEND)
        checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
        trainer = Trainer(max_epochs=epochs, callbacks=[checkpoint], **options)
        trainer.finetune(
            model, strategy=spec, train_dataloaders=loader(), val_dataloaders=loader(), ckpt_path=ckpt_path
        )
        assert isinstance(model, Net)
        return model

    full = run(4, None)
    run(2, None)
    resumed = run(4, tmp_path / "last.ckpt")
    for key, value in full.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_two_ddp_ranks_of_a_compiled_model_stay_identical(tmp_path: Path) -> None:
    run_script(str(HELPERS / "ddp_scenarios.py"), str(tmp_path), "compiled", timeout=600)
    ranks = [torch.load(tmp_path / f"compiled.rank{r}.pt", weights_only=False) for r in (0, 1)]
    for a, b in zip(ranks[0]["epochs"], ranks[1]["epochs"], strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    first, last = ranks[0]["epochs"][0], ranks[0]["epochs"][-1]
    assert not torch.equal(first["backbone.0.weight"], last["backbone.0.weight"])  # unfrozen, and trained
    report = json.loads((tmp_path / "compiled.report.json").read_text())
    assert report["fallbacks"] == []
    assert report["recompiles"] >= 2


def test_the_cli_compiles_the_classifier_and_its_checkpoint_loads_into_an_eager_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--model.compile true``: a compiled fit whose checkpoint has the eager model's keys; ``explain`` says
    what its phase changes cost."""
    from image_helpers import BACKBONE, cli_folders, fit_args

    from finetune_strategies.cli.app import main
    from finetune_strategies.image import ImageClassifier

    data = cli_folders(tmp_path / "data")
    compiled = ["--model.compile=true", '--model.compile_kwargs={"backend": "aot_eager"}']
    strategy = ["--strategy=freeze_unfreeze", "--strategy.unfreeze_epoch=1"]
    assert main(fit_args(data, tmp_path / "run", *compiled, *strategy, epochs=2)) == 0
    (checkpoint,) = (tmp_path / "run").rglob("*.ckpt")
    state = torch.load(checkpoint, weights_only=False)["state_dict"]
    eager = ImageClassifier(num_classes=2, backbone=BACKBONE, pretrained=False)
    assert not any("_orig_mod" in key for key in state)
    assert eager.load_state_dict(state) is not None  # strict: the same keys as the eager model's
    assert ImageClassifier.load_from_checkpoint(checkpoint).compile_kwargs == {"backend": "aot_eager"}
    capsys.readouterr()
    args = [f"--model.backbone={BACKBONE}", "--model.pretrained=false", "--model.num_classes=2", *compiled]
    assert main(["explain", *args, "--strategy=gradual_unfreeze", "--trainer.max_epochs=4"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "compiled: the LightningModule (module.compile()): 3 phase change(s) cost 6 recompile(s)" in out


def test_no_module_outside_compiled_py_touches_torch_dynamo() -> None:
    """As private Lightning APIs are in ``_lightning.py``: torch's private ``_dynamo`` in ``core/compiled.py`` only."""
    import finetune_strategies

    package = Path(finetune_strategies.__file__).parent
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.relative_to(package).as_posix() != "core/compiled.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if "_dynamo" in line
    ]
    assert offenders == []


class ResetDynamo(pl.Callback):
    """Someone calls ``torch._dynamo.reset()`` at the start of epoch 2 (after the strategy's phase start)."""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 2:
            torch._dynamo.reset()


def test_a_reset_of_dynamo_during_the_fit_is_reported_and_the_model_stays_compiled() -> None:
    model = fresh_net()
    compile_module(model, BACKEND)
    strategy = resolve_strategy(("gradual_unfreeze", 1))
    assert isinstance(strategy, FinetuningStrategy)
    watch = Unfrozen()
    options = {**QUIET_TRAINER, "limit_val_batches": 1}
    trainer = pl.Trainer(max_epochs=4, callbacks=[strategy, ResetDynamo(), watch], **options)
    with pytest.warns(UserWarning, match=r"dynamo was reset during the fit \(torch._dynamo.reset\(\)\)"):
        trainer.fit(model, loader(), loader())
    report = strategy.compile_report
    assert report.fallbacks == []
    assert report.phases[-1].graphs >= 1  # compiled again after the reset, not eager
    assert all(not unchanged for unchanged in watch.unchanged.values())
