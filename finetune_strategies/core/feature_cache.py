"""Cache the outputs of a frozen module, so frozen epochs after the first skip its forward pass.

The cache sits in front of ``module.forward`` and keys every sample by a hash of its input bytes,
so it needs no sample indices and works with any dataloader, shuffled or not. It is only valid
when the module computes a fixed function of its input: every parameter frozen, BatchNorm in eval
mode, no active dropout, and the same input for the same sample every epoch (a deterministic
transform). The first three are checked before the cache is used; the last is checked as it runs:
an unknown input in an epoch after the first means the inputs changed, and the cache refuses.
Randomness that no module class reveals (timm's ``DropPath``, stochastic depth in any library, a
random augmentation inside the model) is caught by behaviour: before the cache stores anything, the
module runs twice on the first batch, in train mode, and the two outputs must agree bitwise.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from finetune_strategies.errors import ConfigurationError


@dataclass
class CacheStats:
    """What the cache holds and how it was used."""

    samples: int = 0
    bytes: int = 0
    hits: int = 0
    misses: int = 0
    full: bool = False


def check_frozen(name: str, module: nn.Module) -> None:
    """Raise if any parameter of ``module`` requires grad."""
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    if trainable:
        raise ConfigurationError(
            f"cache_features needs `{name}` fully frozen, but {len(trainable)} of its parameters require grad "
            f"(e.g. {name}.{trainable[0]}). BatchNorm affine parameters train with train_bn=True: pass train_bn=False."
        )


def check_deterministic(name: str, module: nn.Module) -> None:
    """Raise if ``module`` has BatchNorm in train mode or active dropout."""
    batchnorm = [n for n, m in module.named_modules() if isinstance(m, _BatchNorm) and m.training]
    if batchnorm:
        raise ConfigurationError(
            f"cache_features needs BatchNorm in eval mode, but {name}.{batchnorm[0]} is in train mode "
            "(batch statistics change the features). Pass bn_eval=True."
        )
    dropout = [n for n, m in module.named_modules() if isinstance(m, _DropoutNd) and m.training and m.p > 0]
    if dropout:
        raise ConfigurationError(
            f"cache_features needs a deterministic `{name}`, but {name}.{dropout[0]} is an active dropout layer. "
            f"Put `{name}` in eval mode or remove the dropout."
        )


def random_modules(module: nn.Module) -> list[str]:
    """Submodules in train mode that look random: a drop probability above 0, or a class named after it."""
    found = []
    for name, sub in module.named_modules():
        rate = next((getattr(sub, a) for a in ("drop_prob", "p", "drop_rate") if hasattr(sub, a)), None)
        looks_random = any(word in type(sub).__name__ for word in ("Drop", "Stochastic", "Random"))
        if sub.training and name and (looks_random or (isinstance(rate, float) and rate > 0)):
            found.append(name)
    return found


def sample_keys(batch: torch.Tensor) -> list[bytes]:
    """One 128-bit SHA-256 prefix per sample, over its raw bytes (any dtype)."""
    rows = batch.detach().cpu().contiguous().reshape(len(batch), -1).view(torch.uint8).numpy()
    return [hashlib.sha256(row.data).digest()[:16] for row in rows]


class FeatureCache:
    """Per-sample cache of ``module``'s output, installed over its ``forward``.

    Args:
        name: The module's name, for messages.
        module: A frozen module called as ``module(batch_tensor)``.
        max_bytes: Memory bound; once reached, new samples are computed but no longer stored.
    """

    def __init__(self, name: str, module: nn.Module, max_bytes: int) -> None:
        self.name = name
        self.module = module
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self.active = False
        self.checked = False  # check_deterministic ran this epoch
        self.strict = False  # set after the first cached epoch: unknown inputs are then an error
        self.verified = False  # two forward passes of one batch agreed bitwise
        self._store: dict[bytes, torch.Tensor] = {}
        self._seen: set[bytes] = set()  # also the samples that did not fit under max_bytes
        self._original: Callable[..., Any] = module.forward
        module.forward = self._forward

    def close(self) -> CacheStats:
        """Restore the module's forward and free the cache; return the final stats."""
        if self.module.forward == self._forward:
            del self.module.forward  # back to the class's forward
        self._store.clear()
        self._seen.clear()
        return self.stats

    def _forward(self, *args: Any, **kwargs: Any) -> Any:
        if not self.active or len(args) != 1 or kwargs or not isinstance(args[0], torch.Tensor):
            return self._original(*args, **kwargs)
        batch: torch.Tensor = args[0]
        keys = sample_keys(batch)
        missing = [i for i, key in enumerate(keys) if key not in self._store]
        self.stats.hits += len(keys) - len(missing)
        self.stats.misses += len(missing)
        unseen = sum(1 for i in missing if keys[i] not in self._seen)
        if unseen and self.strict:
            raise ConfigurationError(
                f"cache_features: {unseen} of {len(keys)} inputs to `{self.name}` were not seen in the first "
                "cached epoch, so the training inputs change between epochs (a random transform or augmentation?). "
                "The cache needs a deterministic training transform; turn cache_features off."
            )
        computed: dict[int, torch.Tensor] = {}
        if missing:
            with torch.no_grad():
                output = self._original(batch[missing])
                if not self.verified:
                    self._check_fixed_function(batch[missing], output)
            if not isinstance(output, torch.Tensor):
                raise ConfigurationError(
                    f"cache_features needs `{self.name}` to return one tensor, got {type(output).__name__}."
                )
            for row, index in enumerate(missing):
                computed[index] = output[row]
                self._seen.add(keys[index])
                self._remember(keys[index], output[row])
        return torch.stack([computed[i] if i in computed else self._store[keys[i]] for i in range(len(keys))])

    def _check_fixed_function(self, batch: torch.Tensor, output: Any) -> None:
        """Raise unless a second forward pass of ``batch`` gives ``output`` again, bit for bit. The random
        number generators are put back afterwards, so the check changes no other draw of the run."""
        devices = [batch.device.index or 0] if batch.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            again = self._original(batch)
        if isinstance(output, torch.Tensor) and isinstance(again, torch.Tensor) and torch.equal(output, again):
            self.verified = True
            return
        suspects = random_modules(self.module)
        named = f" ({', '.join(f'{self.name}.{n}' for n in suspects)})" if suspects else ""
        raise ConfigurationError(
            f"cache_features needs `{self.name}` to compute a fixed function of its input, but two forward passes "
            f"of the same batch in train mode gave different outputs: it draws random numbers{named}, as "
            "stochastic depth (timm's DropPath, drop_path_rate > 0) or a random augmentation inside the model "
            "does. Turn that off (drop_path_rate=0) or turn cache_features off."
        )

    def _remember(self, key: bytes, features: torch.Tensor) -> None:
        size = features.numel() * features.element_size()
        if self.stats.bytes + size > self.max_bytes:
            if not self.stats.full:
                self.stats.full = True
                rank_zero_warn(
                    f"cache_features: the cache for `{self.name}` reached its bound of "
                    f"{self.max_bytes / 2**20:.0f} MiB after {self.stats.samples} samples; "
                    "further samples are computed every epoch."
                )
            return
        self._store[key] = features.detach().clone()
        self.stats.samples += 1
        self.stats.bytes += size


class CacheSession:
    """The feature caches of one fit: one per frozen module, from the first frozen epoch until a phase starts.

    The strategy calls :meth:`epoch_start` at every epoch start, :meth:`batch_start` /
    :meth:`batch_end` around every training batch (after frozen BatchNorm layers were put in eval
    mode), and :meth:`close` at teardown. ``stats`` reports, per module, what its cache held and served.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.caches: dict[str, FeatureCache] = {}
        self.stats: dict[str, CacheStats] = {}

    def epoch_start(self, frozen: list[tuple[str, nn.Module]], unfreezing_started: bool) -> None:
        """Start, or keep, a cache for every frozen module; drop them all once anything was unfrozen."""
        if unfreezing_started:
            self.close()
            return
        for cache in self.caches.values():
            cache.strict = True  # a later epoch: every input must have been seen before
            cache.checked = False
        for name, module in frozen:
            check_frozen(name, module)
            if name not in self.caches:
                self.caches[name] = FeatureCache(name, module, self.max_bytes)

    def batch_start(self) -> None:
        for name, cache in self.caches.items():
            if not cache.checked:
                check_deterministic(name, cache.module)
                cache.checked = True
            cache.active = True

    def batch_end(self) -> None:
        for cache in self.caches.values():
            cache.active = False  # validation and prediction always run the module

    def close(self) -> None:
        """Restore every module's forward and free the caches, keeping their final stats."""
        for name, cache in self.caches.items():
            self.stats[name] = cache.close()
        self.caches = {}
