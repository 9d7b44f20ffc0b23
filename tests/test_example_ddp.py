"""The distributed example runs as documented: 2 gloo processes, ranks in step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ddp_helpers import subprocess_env

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_finetune.py"


def test_ddp_example_keeps_ranks_identical(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path)],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    for rank in (0, 1):
        assert f"rank {rank}: max difference from rank 0 = 0.0; everything trainable: True" in result.stdout
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
