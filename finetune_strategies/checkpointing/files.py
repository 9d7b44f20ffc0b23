"""Checkpoint files and folders: complete, or an error that names the file.

``torch.load`` reports a truncated file without naming it, and loads a file whose tensor bytes were
damaged without any error at all; :func:`check_file` catches both before anything is loaded.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from finetune_strategies import _lightning
from finetune_strategies.errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"
_DCP_INDEX = ".metadata"  # torch.distributed.checkpoint's index of a sharded checkpoint


def check_file(path: str | Path) -> None:
    """Raise :class:`CheckpointError` if the file at ``path`` is missing, truncated or corrupt.

    A sharded FSDP/ModelParallel checkpoint (a folder) must be complete: torch's distributed-checkpoint
    index and Lightning's metadata file are written last, so a folder with shards but without both was
    cut off. Other folders (DeepSpeed's) are left to their own loader.
    """
    file = Path(path)
    if file.is_dir():
        check_sharded(file)
        return
    if not file.exists():
        raise CheckpointError(f"Checkpoint {file} does not exist.")
    size = file.stat().st_size
    if size == 0:
        raise CheckpointError(f"Checkpoint {file} is empty (0 bytes): it was never written completely.")
    with file.open("rb") as handle:
        head = handle.read(len(_ZIP_MAGIC))
    if head != _ZIP_MAGIC:
        return  # not torch's zip format (e.g. a legacy pickle): the loader decides
    try:
        with zipfile.ZipFile(file) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(
            f"Checkpoint {file} is truncated or corrupt ({size} bytes, {exc}). It was probably cut off "
            "while being written; resume from another checkpoint or delete it."
        ) from exc
    if bad is not None:
        raise CheckpointError(
            f"Checkpoint {file} is corrupt: its record {bad!r} fails the CRC check. Resume from another "
            "checkpoint or delete it."
        )


def check_sharded(folder: Path) -> None:
    """Raise :class:`CheckpointError` if ``folder`` holds a sharded checkpoint that was not written to the end."""
    shards = sorted(p.name for p in folder.glob("*.distcp"))
    metadata = _lightning.sharded_metadata_file()
    missing = [name for name in (_DCP_INDEX, metadata) if not (folder / name).is_file()]
    if (shards or (folder / metadata).exists()) and missing:
        raise CheckpointError(
            f"Sharded checkpoint {folder} is incomplete: it has {len(shards)} shard file(s) but no "
            f"{' and no '.join(missing)}, which are written last. It was probably cut off while being written; "
            "resume from another checkpoint or delete it."
        )


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a sharded checkpoint folder, whose weights and optimizer states the strategy loads
    in place (the loaded dict holds the rest)."""
    return Path(path).is_dir()
