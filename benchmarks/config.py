"""Sizes and settings of one benchmark run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class BenchConfig:
    """What to run.

    Args:
        model: timm model name of the backbone (its classifier is removed; ``head`` is a Linear).
        image_size: Height and width of the synthetic images.
        batch_size: Samples per step.
        num_classes: Classes of the synthetic labels (the head's outputs).
        warmup: Steps discarded at the start of every phase (allocation, kernel selection, optimizer state).
        steps: Measured steps per phase, per round.
        rounds: Times the whole list of variants is run, alternating forward and reverse order so that
            slow drifts in machine load hit every variant alike. Samples are pooled over rounds.
        lr: Learning rate of the head's AdamW; unfrozen backbone groups get the strategy's share of it.
        cache_batches: Batches per epoch in the cache benchmark.
        cache_epochs: Frozen epochs in the cache benchmark (the first fills the cache).
        threads: ``torch.set_num_threads`` value; 0 keeps torch's default.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        seed: Seed of the weights, data and data order.
        quiet_share: A step (or cache epoch) counts as quiet when other processes used at most this
            share of the machine's CPU during it; summaries use quiet samples only when there are
            enough (a shared machine's busy spells would otherwise dominate the medians).
        retries: Extra passes over the variants (and cache settings) that got too few quiet samples.
        retry_until_s: No retry starts later than this many seconds into the run (bounds the runtime).
    """

    model: str = "resnet18"
    image_size: int = 96
    batch_size: int = 32
    num_classes: int = 10
    warmup: int = 2
    steps: int = 8
    rounds: int = 2
    lr: float = 1e-3
    cache_batches: int = 16
    cache_epochs: int = 3
    threads: int = 2
    device: str = "auto"
    seed: int = 0
    quiet_share: float = 0.1
    retries: int = 2
    retry_until_s: int = 480

    def __post_init__(self) -> None:
        for name in ("image_size", "batch_size", "num_classes", "steps", "rounds", "cache_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 (resnet18 downsamples 32x), got {self.image_size}.")
        for name in ("warmup", "threads", "retries", "retry_until_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.cache_epochs < 2:
            raise ValueError(f"cache_epochs must be at least 2 (one fills the cache), got {self.cache_epochs}.")
        if not 0 < self.quiet_share <= 1:
            raise ValueError(f"quiet_share must be in (0, 1], got {self.quiet_share}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one epoch of the speed benchmark: warm-up plus measured steps."""
        return self.warmup + self.steps

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SMOKE = BenchConfig(
    model="test_resnet",
    image_size=32,
    batch_size=4,
    warmup=1,
    steps=3,
    rounds=1,
    cache_batches=2,
    cache_epochs=3,
    retries=0,
    threads=1,  # a tiny model gains nothing from threads, and a shared CI runner punishes them
)
"""Tiny sizes that exercise every code path in seconds (for CI); its numbers mean nothing."""
