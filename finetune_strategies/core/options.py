"""What every strategy accepts: the keyword options of :class:`~finetune_strategies.core.callback.FinetuningStrategy`.

Each option is written in two places that Python and the type checkers need as they are: its type in
:class:`StrategyOptions` (built-in strategies take ``**options: Unpack[StrategyOptions]``, which mypy and
jsonargparse read) and its type and default in ``FinetuningStrategy.__init__``. Its help text and the
default as documented are written once, in :data:`OPTION_DOCS`; the ``Args`` sections of both docstrings
are generated from it, so that ``help()`` and the CLI (``--strategy.help <class>``) show every option.
``tests/core/test_options.py`` checks that the types, the defaults, the docstrings, ``docs/strategies.md``
and the CLI help agree.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Final, NamedTuple, TypedDict, TypeVar

from finetune_strategies.core.auto_rgn import LayerLr
from finetune_strategies.core.triggers import Mode
from finetune_strategies.model.layers import LayerUnit


class StrategyOptions(TypedDict, total=False):
    """Keyword options that every strategy accepts; each one's help is in :data:`OPTION_DOCS`."""

    attr_names: str | Sequence[str] | None
    train_bn: bool
    bn_eval: bool
    lr: float | None
    initial_denom_lr: float
    optimizer_index: int
    preregister_groups: bool
    cache_features: bool
    cache_max_bytes: int
    layer_lr_decay: float | None
    layer_unit: LayerUnit | None
    layer_lr: LayerLr | None
    monitor: str | None
    mode: Mode
    patience: int
    min_delta: float
    max_epochs: int | None
    restore_best: bool
    l2_sp: float | None
    l2_sp_beta: float | None
    save_trainable_only: bool | None
    strict_compile: bool


class OptionDoc(NamedTuple):
    """How an option is documented."""

    default: str
    """The default as Python source (``"backbone"``, ``2**31``), shown as is in docstrings and docs."""
    help: str
    """What the option does, one paragraph."""


OPTION_DOCS: Final[Mapping[str, OptionDoc]] = MappingProxyType(
    {
        "attr_names": OptionDoc(
            "None",
            "The module(s) to freeze when the LightningModule has no ``modules_to_freeze()`` method: module "
            'selectors (names, dotted paths, globs, ``"net[:-1]"`` slices, ``"re:"`` patterns). ``None``: its '
            "``backbone`` attribute, else the backbone of the one timm, torchvision or transformers model it "
            "holds, whose head keeps training (see the any-model page).",
        ),
        "train_bn": OptionDoc(
            "True",
            "Keep the affine parameters of BatchNorm layers in frozen modules trainable (Flash's and Lightning's "
            "default). With ``False`` they stay frozen, also after an unfreeze. ``lp_ft`` defaults to ``False``.",
        ),
        "bn_eval": OptionDoc(
            "False",
            "Put the BatchNorm layers of frozen modules in eval mode, so that they normalise with their running "
            "statistics and do not update them, until they are unfrozen. ``lp_ft`` defaults to ``True``.",
        ),
        "lr": OptionDoc(
            "None",
            "Learning rate of an unfrozen param group. ``None``: group 0's current lr divided by ``initial_denom_lr``.",
        ),
        "initial_denom_lr": OptionDoc("10.0", "Divisor used when ``lr`` is ``None`` (Lightning's default)."),
        "optimizer_index": OptionDoc("0", "With several optimizers, the one that receives unfrozen parameters."),
        "preregister_groups": OptionDoc(
            "False",
            "Give every phase its param groups (lr 0) when the optimizer is built, instead of adding groups when "
            "phases start. Needed by DeepSpeed, whose optimizer cannot take new groups; the ``*_deepspeed`` "
            "strategies set it. Under DeepSpeed the pending parameters keep ``requires_grad=True`` and their "
            "gradients are zeroed until their phase starts.",
        ),
        "cache_features": OptionDoc(
            "False",
            "Until the first phase starts, compute each training sample's features once and reuse them in later "
            "epochs (see :mod:`finetune_strategies.core.feature_cache`). Needs the frozen modules fully frozen "
            "(``train_bn=False``), BatchNorm in eval mode (``bn_eval=True``), no active dropout and a "
            "deterministic training transform; refuses otherwise. The cache is dropped when the first phase "
            "starts. ``lp_ft`` defaults to ``True``, unless ``preregister_groups``.",
        ),
        "cache_max_bytes": OptionDoc("2**31", "Memory bound of the feature cache, in bytes (``2**31`` is 2 GiB)."),
        "layer_lr_decay": OptionDoc(
            "None",
            "Layer-wise learning-rate decay in (0, 1]: every layer a phase unfreezes gets its own param group, "
            "with lr ``phase_lr * layer_lr_decay ** k``, ``k`` counting the layers from the top layer of the "
            "backbone (``k = 0``). ``None``: one group per phase.",
        ),
        "layer_unit": OptionDoc(
            "None",
            'What a layer is (``"blocks"``, ``"param_modules"`` or ``"flash_leaves"``, see '
            ':mod:`finetune_strategies.model.layers`). ``None``: the strategy\'s default, ``"blocks"``, or '
            '``"param_modules"`` for ``unfreeze_milestones``.',
        ),
        "layer_lr": OptionDoc(
            "None",
            '``"auto_rgn"``: Auto-RGN (Lee et al., ICLR 2023). Every backbone layer gets its own param group (as '
            "with ``layer_lr_decay``), and before every optimizer step each group's lr is scaled by its relative "
            "gradient norm ``||g|| / ||w||`` divided by the largest one, so that group trains at the full lr; the "
            "scheduled lrs are back after the step (see :mod:`finetune_strategies.core.auto_rgn`). ``None``: off.",
        ),
        "monitor": OptionDoc(
            "None",
            "End every stage when this validation metric plateaus, instead of waiting for the next phase's "
            "epoch, which then only says when it starts at the latest (see "
            ":mod:`finetune_strategies.core.triggers`). ``None``: phases start at their epochs.",
        ),
        "mode": OptionDoc('"min"', '``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.'),
        "patience": OptionDoc("1", "How many validation runs without improvement end a stage."),
        "min_delta": OptionDoc("0.0", "The least change of ``monitor`` that counts as an improvement."),
        "max_epochs": OptionDoc(
            "None", "The most epochs a stage may run before the next phase starts. ``None``: no limit."
        ),
        "restore_best": OptionDoc(
            "True",
            "Before the next phase unfreezes anything, put back the weights and buffers of the ending stage's "
            "best validation.",
        ),
        "l2_sp": OptionDoc(
            "None",
            "L2-SP's ``alpha``: add ``alpha / 2 * ||w - w0||^2`` over the frozen (pretrained) modules' parameters "
            "that train, ``w0`` being their weights at the fit's start (see :mod:`finetune_strategies.core.l2_sp`). "
            "Keeps one copy of those weights. ``None``: off.",
        ),
        "l2_sp_beta": OptionDoc(
            "None",
            "With ``l2_sp``, also add plain L2, ``beta / 2 * ||w||^2``, over the other parameters that train (the "
            "head). ``None``: off.",
        ),
        "save_trainable_only": OptionDoc(
            "None",
            "Checkpoints keep only the parameters that are or were trainable, plus a SHA-256 fingerprint of the "
            "frozen ones, which loading rebuilds from the model as constructed (see "
            ":mod:`finetune_strategies.checkpointing.trainable_only`). ``None``: the strategy's default, on for "
            "``lora``, off for the others.",
        ),
        "strict_compile": OptionDoc(
            "False",
            "On a compiled model (see the compiled-models page), stop the fit with a ``CompileFallbackError`` "
            "when dynamo falls back to eager (its recompile limit hit despite the room the strategy makes for its "
            "phase changes, or the limit lowered during the fit). ``False``: a warning naming the cause and the fix.",
        ),
    }
)
"""Every option's documented default and help text, in the order of :class:`StrategyOptions`."""

DOCSTRING_WIDTH = 110
"""Where the generated ``Args`` lines wrap (the source's 120 columns, less a class docstring's indent)."""

_Documented = TypeVar("_Documented", bound=type)


def options_args_section() -> str:
    """The ``Args:`` section of a class docstring (indented as one): every option, its help and its default."""
    lines = ["    Args:"]
    for name, doc in OPTION_DOCS.items():
        entry = f"{name}: {doc.help} Default: ``{doc.default}``."
        lines += textwrap.wrap(
            entry,
            DOCSTRING_WIDTH,
            initial_indent=" " * 8,
            subsequent_indent=" " * 12,
            break_long_words=False,
            break_on_hyphens=False,
        )
    return "\n".join(lines)


def document_options(cls: _Documented) -> _Documented:
    """Append :func:`options_args_section` to ``cls``'s docstring (left alone under ``python -OO``)."""
    if cls.__doc__ is not None:
        cls.__doc__ = f"{cls.__doc__.rstrip()}\n\n{options_args_section()}\n"
    return cls


document_options(StrategyOptions)
