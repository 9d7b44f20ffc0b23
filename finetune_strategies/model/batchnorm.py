"""The BatchNorm policy: what freezing and unfreezing do to BatchNorm layers, and which parameters thaw.

Lightning's ``BaseFinetuning.freeze`` semantics, with two choices made explicit:

* ``train_bn=True`` (Flash's and Lightning's default): the affine parameters of BatchNorm layers in
  frozen modules keep training, and their running statistics keep updating. ``False`` freezes both,
  and keeps the affine parameters frozen after an unfreeze too.
* ``bn_eval=True``: BatchNorm layers of frozen modules run in eval mode (running statistics, no
  updates) until their module is unfrozen.

Unfreezing always works on a module's *own* parameters (``recurse=False``): callers pass flat lists
of modules (a layer's modules, or ``BaseFinetuning.flatten_modules`` of what a user passed).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def flatten(modules: nn.Module | Iterable[Any]) -> list[nn.Module]:
    """Modules that own parameters directly, or leaves, from a module or nested iterables of them."""
    return BaseFinetuning.flatten_modules(modules)


def own_parameters(modules: Iterable[nn.Module], train_bn: bool) -> list[nn.Parameter]:
    """The parameters the modules own directly, once each, skipping BatchNorm layers unless ``train_bn``."""
    seen: set[int] = set()
    params = []
    for module in modules:
        if isinstance(module, _BatchNorm) and not train_bn:
            continue
        for param in module.parameters(recurse=False):
            if id(param) not in seen:
                seen.add(id(param))
                params.append(param)
    return params


def thaw(modules: Iterable[nn.Module], train_bn: bool) -> None:
    """Make the modules' own parameters trainable; BatchNorm layers track statistics again and, unless
    ``train_bn``, keep their affine parameters frozen."""
    for module in modules:
        if isinstance(module, _BatchNorm):
            module.track_running_stats = True
            if not train_bn:
                continue
        for param in module.parameters(recurse=False):
            param.requires_grad = True


class BatchNormPolicy:
    """Freezes modules the way ``train_bn`` and ``bn_eval`` ask, and undoes it when they thaw.

    ``kept_trainable`` holds the parameters that stay trainable inside frozen modules, BatchNorm's
    (``train_bn=True``) and a head's (:meth:`keep`): they train from the start, in the optimizer's own groups.
    """

    def __init__(self, train_bn: bool, bn_eval: bool) -> None:
        self.train_bn = train_bn
        self.bn_eval = bn_eval
        self.eval_layers: set[_BatchNorm] = set()
        self.kept_layers: list[nn.Module] = []

    @property
    def kept_trainable(self) -> set[int]:
        """Ids of the parameters that the kept BatchNorm layers hold now (FSDP2 may have replaced them)."""
        return {id(p) for layer in self.kept_layers for p in layer.parameters(recurse=False)}

    def freeze(self, module: nn.Module) -> None:
        """Freeze ``module`` and everything in it."""
        for layer in flatten(module):
            is_bn = isinstance(layer, _BatchNorm)
            if is_bn and self.train_bn:
                thaw([layer], train_bn=True)
                if layer not in self.kept_layers:
                    self.kept_layers.append(layer)
            else:
                BaseFinetuning.freeze_module(layer)
            if is_bn and self.bn_eval:
                self.eval_layers.add(layer)  # type: ignore[arg-type]

    def keep(self, module: nn.Module) -> None:
        """Keep ``module``, inside a frozen one, training from the start with everything in it (a head)."""
        for layer in flatten(module):
            thaw([layer], train_bn=True)
            self.eval_layers.discard(layer)
            if layer not in self.kept_layers:
                self.kept_layers.append(layer)

    def thaw(self, modules: Iterable[nn.Module], train_bn: bool) -> None:
        """Thaw the modules' own parameters; their BatchNorm layers leave eval mode."""
        modules = list(modules)
        thaw(modules, train_bn)
        for module in modules:
            if module in self.eval_layers:
                self.eval_layers.discard(module)
                module.train(True)

    def keep_eval(self) -> None:
        """Put frozen BatchNorm layers back in eval mode (Lightning sets the model to train mode)."""
        for layer in self.eval_layers:
            if layer.training:
                layer.eval()
