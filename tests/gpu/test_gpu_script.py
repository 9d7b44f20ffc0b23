"""``run_gpu_checks.sh`` is valid bash, names test files that exist, and says so when there is no GPU."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).with_name("run_gpu_checks.sh")
ROOT = SCRIPT.parents[2]


def test_the_gpu_script_is_valid_bash_and_names_existing_tests() -> None:
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    named = re.findall(r"tests/[\w/]+(?:\.\w+)?", SCRIPT.read_text())
    assert "tests/gpu/test_fsdp1.py" in named
    assert "tests/distributed/test_deepspeed.py" in named
    assert all((ROOT / path).exists() for path in named), named


def test_without_a_gpu_the_script_refuses_with_a_reason() -> None:
    if torch.cuda.is_available():
        return  # on a GPU machine the script runs the checks instead
    result = subprocess.run(
        ["bash", str(SCRIPT)], env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
