#!/usr/bin/env bash
# Every check that needs a GPU, in one go, within 8 minutes on one GPU:
#   * tests/gpu/test_fsdp1.py: FSDP1 (FSDPStrategy, use_orig_params=True) on min(GPUs, 2) ranks: every
#     built-in, the *_deepspeed ones, layer_lr_decay, gradual_unfreeze, phases, plateau triggers, resume
#     from a sharded checkpoint, and the refused combinations;
#   * tests/distributed/test_deepspeed.py: the *_deepspeed strategies under DeepSpeed ZeRO 1, 2 and 3 on one GPU;
#   * with 2 GPUs or more, tests/distributed/test_deepspeed_zero.py on CUDA too (CI runs it on CPU).
# tests/gpu/test_compiled_gpu.py (the compile benchmark on CUDA, CUDA graphs off and on; inductor compiles for
# many minutes) is left out here: run it on its own (see docs/compiled.md).
# Usage: tests/gpu/run_gpu_checks.sh [pytest options]   (PYTHON=... picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
gpus=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -lt 1 ]; then
    echo "run_gpu_checks.sh: no CUDA device; these checks need a GPU (CI runs the CPU ones)" >&2
    exit 2
fi
tests=(tests/gpu tests/distributed/test_deepspeed.py)
if [ "$gpus" -ge 2 ]; then
    tests+=(tests/distributed/test_deepspeed_zero.py)
fi
echo "run_gpu_checks.sh: $gpus GPU(s): ${tests[*]}"
# -rs lists every skip with its reason: on a GPU machine nothing here should be skipped
exec timeout 480 "$PYTHON" -m pytest -q -p no:cacheprovider -rs --ignore=tests/gpu/test_compiled_gpu.py "${tests[@]}" "$@"
