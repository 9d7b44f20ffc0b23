"""Every private Lightning API this library touches, and the private parts of torch's DDP, in one place.

Lightning gives a callback no public way to rebuild the DDP wrapper after an unfreeze, to check a
checkpoint where the trainer loads it, to parse ``configure_optimizers`` output outside a fit, to
keep its callback order, or to add per-subcommand CLI arguments. The few private names that do
these jobs are used here and nowhere else. :data:`PRIVATE_APIS` lists them with a check each;
``tests/test_private_apis.py`` runs the checks, so a Lightning release that renames or reshapes
one fails with a message naming the installed version, and :func:`private` raises such an error
at run time instead of an ``AttributeError`` from deep inside a fit.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import lightning
import lightning.pytorch as pl
import torch
from lightning.fabric.utilities import load as fabric_load
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core import optimizer as lightning_optimizer
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.connectors import callback_connector, checkpoint_connector
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer
from typing_extensions import override

from finetune_strategies.errors import ConfigurationError

LIGHTNING_VERSION: str = lightning.__version__
T = TypeVar("T")


def private(owner: Any, name: str) -> Any:
    """``owner.name``, or a :class:`ConfigurationError` naming the Lightning and torch versions."""
    try:
        return getattr(owner, name)
    except AttributeError:
        where = getattr(owner, "__name__", type(owner).__name__)
        raise ConfigurationError(
            f"finetune-strategies needs the private {where}.{name}, which Lightning {LIGHTNING_VERSION} "
            f"(torch {torch.__version__}) does not have. Install a Lightning version this release supports, "
            "or report it with both versions."
        ) from None


# ------------------------------------------------------------------ optimizers
class ParsedOptimizers(NamedTuple):
    """What ``configure_optimizers`` returned: optimizers, LR schedulers and each scheduler's interval."""

    optimizers: list[Optimizer]
    schedulers: list[Any]
    intervals: list[str]


def parse_optimizers(config: Any) -> ParsedOptimizers:
    """The optimizers and LR schedulers of a ``configure_optimizers`` return value, as Lightning reads it."""
    optimizers, schedulers, _ = private(lightning_optimizer, "_configure_optimizers")(config)
    return ParsedOptimizers(
        list(optimizers),
        [s["scheduler"] if isinstance(s, dict) else s for s in schedulers],
        [str(s.get("interval", "epoch")) if isinstance(s, dict) else "epoch" for s in schedulers],
    )


# ------------------------------------------------------------------ callbacks
def reorder_callbacks(callbacks: list[Callback]) -> list[Callback]:
    """Lightning's own order: tuner callbacks first, checkpoint callbacks last, the rest as given."""
    reorder = private(callback_connector._CallbackConnector, "_reorder_callbacks")
    return list(reorder(callbacks))


# ------------------------------------------------------------------ checkpoints
def intercept_resume(
    trainer: pl.Trainer,
    before: Callable[[Any], None],
    after: Callable[[Any, dict[str, Any]], None],
    on_error: Callable[[Any, Exception], Exception],
) -> None:
    """Run ``before(path)`` and ``after(path, loaded)`` around the trainer's load of ``ckpt_path``.

    An exception from the load itself is passed through ``on_error``, which returns the one to raise.
    Installing twice on the same trainer does nothing.
    """
    connector = private(trainer, "_checkpoint_connector")
    if getattr(connector, "_finetune_guarded", False):
        return
    connector.resume_start = _GuardedResume(connector, private(connector, "resume_start"), before, after, on_error)
    connector._finetune_guarded = True


class _GuardedResume:
    """The connector's ``resume_start`` with the checks of :func:`intercept_resume` around it; an object
    rather than a closure, so that the trainer still pickles (``ddp_spawn`` pickles it)."""

    def __init__(
        self,
        connector: Any,
        load: Callable[..., None],
        before: Callable[[Any], None],
        after: Callable[[Any, dict[str, Any]], None],
        on_error: Callable[[Any, Exception], Exception],
    ) -> None:
        self.connector, self.load, self.before, self.after, self.on_error = connector, load, before, after, on_error

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        path = args[0] if args else kwargs.get("checkpoint_path")
        if path:
            self.before(path)
        try:
            self.load(*args, **kwargs)
        except Exception as error:
            raise self.on_error(path, error) from error
        loaded = private(self.connector, "_loaded_checkpoint")
        if path and loaded:
            self.after(path, loaded)


def loaded_checkpoint(trainer: pl.Trainer) -> dict[str, Any] | None:
    """The checkpoint a fit resumes from, as Lightning loaded it (until it restores the training state)."""
    loaded = getattr(private(trainer, "_checkpoint_connector"), "_loaded_checkpoint", None)
    return loaded if isinstance(loaded, dict) and loaded else None


# ------------------------------------------------------------------ sharded checkpoints
def sharded_metadata_file() -> str:
    """The file in a sharded (FSDP, ModelParallel) checkpoint folder that holds everything but weights and
    optimizer states: loops, callbacks, and so on."""
    name: str = private(fabric_load, "_METADATA_FILENAME")
    return name


# ------------------------------------------------------------------ DDP
def rebuild_ddp(strategy: DDPStrategy, module: torch.nn.Module) -> DistributedDataParallel:
    """Wrap ``module`` in a new DDP module built by ``strategy`` with its options, and install it."""
    new: DistributedDataParallel = private(strategy, "_setup_model")(module)
    strategy.model = new
    private(strategy, "_register_ddp_hooks")()
    return new


def detach_ddp(ddp: DistributedDataParallel) -> None:
    """Stop ``ddp`` from reducing gradients: remove its reducer's and its Python autograd hooks."""
    private(ddp, "_remove_autograd_hooks")()
    for handle in getattr(ddp, "_accum_grad_hooks", []):
        handle.remove()


# ------------------------------------------------------------------ modules and the CLI
def attached_trainer(module: pl.LightningModule) -> pl.Trainer | None:
    """The trainer ``module`` is attached to, or None (``module.trainer`` raises when there is none)."""
    trainer: pl.Trainer | None = private(module, "_trainer")
    return trainer


def with_subcommand_arguments(cli_class: type[T]) -> type[T]:
    """Give a ``LightningCLI`` subclass the hook ``add_subcommand_arguments(parser, subcommand)``.

    Lightning builds one parser per subcommand in its private ``_prepare_subcommand_parser``; the hook
    runs on each, so arguments can depend on the subcommand.
    """
    build = private(cli_class, "_prepare_subcommand_parser")

    def prepare(self: Any, klass: type, subcommand: str, **kwargs: Any) -> Any:
        parser = build(self, klass, subcommand, **kwargs)
        self.add_subcommand_arguments(parser, subcommand)
        return parser

    cli_class._prepare_subcommand_parser = override(prepare)  # type: ignore[attr-defined]
    return cli_class


def replace_ckpt_hyperparameters(cli_class: type[T], parse: Callable[[Any], None]) -> type[T]:
    """Make ``parse(cli)`` what a ``LightningCLI`` subclass runs, instead of Lightning's private
    ``_parse_ckpt_path``, to read the model's hyperparameters from ``--ckpt_path`` before the classes are
    built (Lightning's loads with ``weights_only=True`` whatever ``--weights_only`` says, and lets every
    error through as a traceback)."""
    private(cli_class, "_parse_ckpt_path")
    cli_class._parse_ckpt_path = override(parse)  # type: ignore[attr-defined]
    return cli_class


# ------------------------------------------------------------------ the checks
def _has_parameters(owner: Any, name: str, expected: tuple[str, ...]) -> str | None:
    found = getattr(owner, name, None)
    if found is None:
        return f"{getattr(owner, '__name__', owner)}.{name} is missing"
    parameters = list(inspect.signature(found).parameters)
    missing = [p for p in expected if p not in parameters]
    if missing:
        return f"{getattr(owner, '__name__', owner)}.{name}{inspect.signature(found)} has no parameter {missing}"
    return None


def _connector_has_loaded_checkpoint() -> str | None:
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.ERROR)  # a Trainer logs its accelerator choice
    try:
        trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    finally:
        logger.setLevel(level)
    connector = getattr(trainer, "_checkpoint_connector", None)
    if connector is None:
        return "Trainer._checkpoint_connector is missing"
    if not isinstance(getattr(connector, "_loaded_checkpoint", None), dict):
        return "_CheckpointConnector._loaded_checkpoint is missing"
    return _has_parameters(type(connector), "resume_start", ("checkpoint_path",))


# ------------------------------------------------------------------ compiled models
def compiled_by_lightning(module: pl.LightningModule) -> bool:
    """Whether ``Trainer.fit`` received ``module`` as ``torch.compile(module)``: Lightning unwraps it and compiles
    its ``forward`` and step methods in place, noting it in ``LightningModule._compiler_ctx``."""
    return getattr(module, "_compiler_ctx", None) is not None


PRIVATE_APIS: dict[str, Callable[[], str | None]] = {
    "LightningModule._compiler_ctx": lambda: (
        None if hasattr(pl.LightningModule(), "_compiler_ctx") else "LightningModule._compiler_ctx is missing"
    ),
    "lightning.pytorch.core.optimizer._configure_optimizers": lambda: _has_parameters(
        lightning_optimizer, "_configure_optimizers", ("optim_conf",)
    ),
    "_CallbackConnector._reorder_callbacks": lambda: _has_parameters(
        callback_connector._CallbackConnector, "_reorder_callbacks", ("callbacks",)
    ),
    "Trainer._checkpoint_connector.resume_start / _loaded_checkpoint": _connector_has_loaded_checkpoint,
    "_CheckpointConnector (module)": lambda: (
        None
        if hasattr(checkpoint_connector, "_CheckpointConnector")
        else "lightning.pytorch.trainer.connectors.checkpoint_connector._CheckpointConnector is missing"
    ),
    "lightning.fabric.utilities.load._METADATA_FILENAME": lambda: (
        None
        if isinstance(getattr(fabric_load, "_METADATA_FILENAME", None), str)
        else "lightning.fabric.utilities.load._METADATA_FILENAME is missing"
    ),
    "DDPStrategy._setup_model": lambda: _has_parameters(DDPStrategy, "_setup_model", ("model",)),
    "DDPStrategy._register_ddp_hooks": lambda: _has_parameters(DDPStrategy, "_register_ddp_hooks", ()),
    "DistributedDataParallel._remove_autograd_hooks": lambda: _has_parameters(
        DistributedDataParallel, "_remove_autograd_hooks", ()
    ),
    "LightningModule._trainer": lambda: (
        None if hasattr(pl.LightningModule(), "_trainer") else "LightningModule._trainer is missing"
    ),
    "LightningCLI._prepare_subcommand_parser": lambda: _has_parameters(
        __import__("lightning.pytorch.cli", fromlist=["LightningCLI"]).LightningCLI,
        "_prepare_subcommand_parser",
        ("klass", "subcommand"),
    ),
    "LightningCLI._parse_ckpt_path": lambda: _has_parameters(
        __import__("lightning.pytorch.cli", fromlist=["LightningCLI"]).LightningCLI, "_parse_ckpt_path", ()
    ),
}
"""Each private API by name, with a check that returns what changed, or None."""


def check_private_apis() -> dict[str, str]:
    """What changed in each private API that differs from what this library expects, by name."""
    problems = {}
    for name, check in PRIVATE_APIS.items():
        problem = check()
        if problem is not None:
            problems[name] = f"{problem} (Lightning {LIGHTNING_VERSION}, torch {torch.__version__})"
    return problems
