"""Sizes and settings of one benchmark run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BenchConfig:
    """What to run; every field is a flag of ``python -m benchmarks.run`` (see docs/benchmarks.md).

    Args:
        model, image_size: timm backbone (its classifier removed; the head is a Linear) and its image size.
        vit_model, vit_image_size: the timm ViT of the per-layer-groups comparison and the size it is built for.
        batch_size, num_classes: Samples per step; classes of the synthetic labels.
        warmup: Steps discarded at the start of every phase (allocation, kernel selection, optimizer state).
        steps: Measured steps per phase: per round in a paired comparison, and in the run of each variant alone.
        rounds, max_rounds: Rounds of every paired comparison at least and at most (see
            :func:`benchmarks.stats.run_rounds`).
        lr: Learning rate of the head's AdamW; unfrozen backbone groups get the strategy's share of it.
        cache_batches, cache_epochs: Batches per epoch and frozen epochs per round of the cache suite (the
            first epoch fills the cache).
        threads: ``torch.set_num_threads``; 0 keeps torch's default. With two threads on a shared machine, a
            neighbour's time slice taken from one thread leaves the other waiting at the next barrier.
        clock: What the paired comparisons judge: ``"cpu"`` (the process's CPU time per step), ``"wall"``, or
            ``"auto"`` (CPU time on the CPU, wall time on CUDA). Both are reported.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"`` (CUDA when available).
        seed: Seed of the weights, data and data order.
        quiet_share: A step counts as quiet when other processes used at most this share of the machine's
            CPU during it (see :func:`benchmarks.stats.usable`).
        budget_s: No extra round starts later than this many seconds after the first round.
    """

    model: str = "resnet18"
    image_size: int = 96
    vit_model: str = "vit_tiny_patch16_224"
    vit_image_size: int = 64
    batch_size: int = 32
    num_classes: int = 10
    warmup: int = 2
    steps: int = 8
    rounds: int = 4
    max_rounds: int = 32
    lr: float = 1e-3
    cache_batches: int = 16
    cache_epochs: int = 3
    threads: int = 1
    clock: str = "auto"
    device: str = "auto"
    seed: int = 0
    quiet_share: float = 0.1
    budget_s: int = 3600

    def __post_init__(self) -> None:
        for name in ("image_size", "vit_image_size", "batch_size", "num_classes", "steps", "rounds", "cache_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32 (resnet18 downsamples 32x), got {self.image_size}.")
        if self.vit_image_size % 16:
            raise ValueError(f"vit_image_size must be a multiple of 16 (the ViT's patches), got {self.vit_image_size}.")
        if self.max_rounds < self.rounds:
            raise ValueError(f"max_rounds must be at least rounds ({self.rounds}), got {self.max_rounds}.")
        for name in ("warmup", "threads", "budget_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        if self.cache_epochs < 2:
            raise ValueError(f"cache_epochs must be at least 2 (one fills the cache), got {self.cache_epochs}.")
        if not 0 < self.quiet_share <= 1:
            raise ValueError(f"quiet_share must be in (0, 1], got {self.quiet_share}.")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}.")
        if self.clock not in ("auto", "cpu", "wall"):
            raise ValueError(f"clock must be 'auto', 'cpu' or 'wall', got {self.clock!r}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")

    @property
    def steps_per_epoch(self) -> int:
        """Batches in one epoch of the speed benchmark: warm-up plus measured steps."""
        return self.warmup + self.steps


SMOKE = BenchConfig(
    model="test_resnet",
    image_size=32,
    vit_model="test_vit",
    vit_image_size=32,
    batch_size=4,
    warmup=1,
    steps=3,
    rounds=1,
    max_rounds=1,
    cache_batches=2,
    cache_epochs=3,
)
"""Tiny sizes that exercise every code path in seconds (for CI); its numbers mean nothing and judge nothing."""
