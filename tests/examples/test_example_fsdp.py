"""The FSDP2 example runs as documented: 2 gloo processes, sharded, and a second call resumes."""

from __future__ import annotations

from pathlib import Path

from ddp_helpers import run_script

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "fsdp_finetune.py"


def test_fsdp_example_shards_the_model_and_resumes_from_its_sharded_checkpoint(tmp_path: Path) -> None:
    first = _output(str(EXAMPLE), str(tmp_path), "2")
    assert (tmp_path / "checkpoints" / "last.ckpt").is_dir()  # a folder of shards
    second = _output(str(EXAMPLE), str(tmp_path), "3")
    held = []
    for rank in (0, 1):
        assert f"rank {rank}: epoch 2, resumed: False; holds " in first
        lines = [line for line in second.splitlines() if line.startswith(f"rank {rank}: epoch 3, resumed: True")]
        assert len(lines) == 1, f"rank {rank} did not report its resumed run:\n{second[-6000:]}"
        (line,) = lines
        assert line.endswith("optimizer state for 18 of 18 parameters; everything trainable: True")
        held.append(int(line.split("holds ")[1].split(" of ")[0]))
    assert sum(held) == 4579  # each rank holds its shard, together the whole model


def _output(*args: str) -> str:
    result = run_script(*args, timeout=600)
    return result.stdout + result.stderr
