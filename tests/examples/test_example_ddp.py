"""The distributed example runs as documented: 2 gloo processes, ranks in step."""

from __future__ import annotations

from pathlib import Path

from ddp_helpers import run_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp_finetune.py"


def test_ddp_example_keeps_ranks_identical(tmp_path: Path) -> None:
    result = run_script(str(EXAMPLE), str(tmp_path), timeout=600)
    for rank in (0, 1):
        assert f"rank {rank}: max difference from rank 0 = 0.0; everything trainable: True" in result.stdout
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
