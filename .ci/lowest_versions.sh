#!/usr/bin/env bash
# The core tests, and the demo's, on the lowest versions pyproject.toml allows, in a venv of their own.
#
# uv resolves every direct dependency (and the `test` and `demo` extras) to the lowest version its pin
# allows (`--resolution lowest-direct`); their own dependencies resolve as usual. The resolved versions
# are printed first. docs/installation.md lists them and why each floor is where it is. The core tests
# need no extra; the demo's tests run too, so that the demo extra's floors are tested as well. That the
# core works without the demo extra is checked by .ci/packaging.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

# The core: strategies, resolution, anchor fixes, schedules, resume and checkpoints, safe loading,
# DDP, the soak's short form, transfer learning, the CLI, the layout, 0.1's files, the options and @override.
CORE_TESTS=(
  tests/strategies/test_strategies.py tests/strategies/test_resolution.py tests/core/test_anchor_fixes.py tests/core/test_schedules.py
  tests/core/test_compat.py tests/model/test_layers.py tests/test_trainer.py tests/checkpointing/test_checkpoints.py
  tests/checkpointing/test_kill_resume.py tests/checkpointing/test_safe_loading.py tests/checkpointing/test_weights.py tests/distributed/test_ddp.py
  tests/core/test_soak.py tests/transfer/test_transfer_runner.py tests/cli/test_cli.py
  tests/test_layout.py tests/test_legacy_files.py tests/core/test_options.py tests/test_overrides.py
  tests/core/test_auto_rgn.py tests/choose/test_surgical.py tests/choose/test_suggest.py
)
# The demo extra (scikit-learn, matplotlib): the demo, plot_drift, and the errors without the extra.
DEMO_TESTS=(tests/demo/test_demo.py tests/recipes/test_drift.py tests/test_extras.py)

python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/uv" && "$work/uv/bin/pip" install -q uv
"$work/uv/bin/uv" venv -q -p "$python" "$work/venv"
"$work/uv/bin/uv" pip install -q -p "$work/venv/bin/python" --resolution lowest-direct -e ".[test,demo]"
echo "+ lowest versions:"
"$work/uv/bin/uv" pip freeze -p "$work/venv/bin/python" \
  | grep -iE '^(torch|torchvision|lightning|timm|torchmetrics|jsonargparse|rich|matplotlib|scikit-learn|safetensors|pillow|numpy|pyyaml|scipy|pytest|hypothesis)=='

echo "+ pytest ${CORE_TESTS[*]} ${DEMO_TESTS[*]}"
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider "${CORE_TESTS[@]}" "${DEMO_TESTS[@]}"
