"""Checkpoint files that survive a crash while being written and run no code while being read.

Lightning's ``TorchCheckpointIO`` serialises the whole checkpoint into memory, writes it to a
temporary file in the system's temp folder and moves it onto the target. When that folder is on
another file system the move is a copy, so a process killed during it leaves a truncated
checkpoint in place of the last good one; the file is never synced to disk; and with torch before
2.6 it loads with ``weights_only=False`` unless told otherwise, which runs any code a pickle names.

:class:`SafeCheckpointIO` (what :class:`~finetune_strategies.Trainer` uses by default) writes each
checkpoint to a temporary file beside the target, syncs it and renames it onto the target
(:func:`atomic_write`), so the target is always either the previous complete file or the new one.
It loads with ``weights_only=True`` unless told otherwise, with every supported torch; a checkpoint
that holds other objects raises :class:`~finetune_strategies.errors.CheckpointError` naming what it
holds, and only an explicit ``weights_only=False`` unpickles it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import lightning.pytorch as pl
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import CheckpointIO, TorchCheckpointIO
from typing_extensions import override

from finetune_strategies.checkpointing.weights import torch_load
from finetune_strategies.errors import CheckpointError

PARTIAL_SUFFIX = ".partial"
TRUST_HINT = (
    "If you trust the file, pass weights_only=False with ckpt_path (Trainer.fit, finetune, validate, test, predict; "
    "`--weights_only false` in the CLI)."
)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Write ``path`` all at once: the block writes to ``.<name>.partial`` beside it, which is then synced
    and renamed onto ``path``. A crash at any point leaves ``path`` as it was (a killed writer may leave
    the partial file, which the next write of the same path replaces). Whatever is at the partial path
    is removed first and the file is created exclusively, so a link planted there is never followed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}{PARTIAL_SUFFIX}")
    partial.unlink(missing_ok=True)  # a killed writer's leftover, or a planted link: removed, never followed
    try:
        # created exclusively: if anything appears at the name again before this, the write fails
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except FileExistsError:
        raise CheckpointError(
            f"Cannot write {target}: {partial} appeared while it was being created (another writer, or a planted "
            "link). Nothing was written; check who else writes into this folder."
        ) from None
    try:
        with open(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # a folder cannot be opened for syncing on every platform
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic, synced writes of local files and ``weights_only=True`` loads.

    Args:
        weights_only: How a load that does not say loads: ``True`` refuses anything but tensors and
            plain containers; ``False`` unpickles in full, which runs code from the file (trusted
            files only).
    """

    def __init__(self, weights_only: bool = True) -> None:
        super().__init__()
        self.weights_only = weights_only

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)  # Lightning's errors, remote files
            return
        with atomic_write(path) as handle:
            torch.save(checkpoint, handle)

    @override
    def load_checkpoint(
        self, path: Any, map_location: Callable[..., Any] | Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        file_system = get_filesystem(path)
        if not file_system.exists(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        safe = self.weights_only if weights_only is None else weights_only
        with file_system.open(path, "rb") as handle:
            loaded: dict[str, Any] = torch_load(
                handle,
                f"checkpoint {str(path)!r}",
                weights_only=safe,
                error=CheckpointError,
                opt_in=TRUST_HINT,
                map_location="cpu" if map_location is None else map_location,
            )
        return loaded


def use_safe_checkpoint_io(trainer: pl.Trainer, plugins: Any = None) -> None:
    """Give ``trainer``'s strategy a :class:`SafeCheckpointIO` in place of Lightning's default one; a
    checkpoint IO the user chose (in ``plugins``, the trainer's argument), XLA's or an async wrapper is kept."""
    chosen = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(plugin, CheckpointIO) for plugin in chosen):
        return
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = SafeCheckpointIO()
