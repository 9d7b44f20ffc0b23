#!/usr/bin/env bash
# Packaging: build the sdist and the wheel, check what they hold, then install the wheel alone (its core
# dependencies, no extra) in a fresh venv and use it from outside the checkout.
#
# The build reads a copy of the files git would ship (tracked ones and new ones that are not ignored), so
# that a stale *.egg-info or build/ in the checkout cannot add to it. `python -m build` makes the sdist and
# then the wheel from the sdist: a file the sdist lacks is missing from the wheel too, and the checks fail.
# uv installs the wheel's dependencies (from its cache after the first run: seconds instead of minutes);
# the venv has nothing else, so a dependency the wheel does not declare fails the import checks.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

SUBPACKAGES=(checkpointing choose cli core demo image model recipes strategies tasks text transfer)
# demo needs [demo]; text imports without [text] (building a model or tokenizer needs it)
CORE_SUBPACKAGES=(checkpointing choose cli core image model recipes strategies tasks text transfer)

step() { echo "+ [$((SECONDS - start)) s] $*"; }
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "copy of the files git would ship"
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' file; do if [ -e "$file" ]; then printf '%s\0' "$file"; fi; done \
  | tar --null -T - -cf - | tar -xf - -C "$work/src"

step "build the sdist, then the wheel from it"
"$python" -m venv "$work/tools" && "$work/tools/bin/pip" install -q build uv
"$work/tools/bin/python" -m build -q --outdir "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
  || { cat "$work/build.log" >&2; exit 1; }
wheel=$(echo "$work"/dist/*.whl) sdist=$(echo "$work"/dist/*.tar.gz)
version=$(basename "$wheel" | cut -d- -f2)
echo "built $(basename "$sdist") and $(basename "$wheel")"

step "contents"
"$work/tools/bin/python" - "$wheel" "$sdist" "$version" "$work/src" "${SUBPACKAGES[@]}" <<'EOF'
import sys
import tarfile
import zipfile
from pathlib import Path

wheel_path, sdist_path, version, src, *subpackages = sys.argv[1:]
wheel = sorted(zipfile.ZipFile(wheel_path).namelist())
with tarfile.open(sdist_path) as archive:
    sdist = sorted(name.split("/", 1)[1] for name in archive.getnames() if "/" in name)
print(f"wheel ({len(wheel)} files):", *wheel, sep="\n  ")
print(f"sdist ({len(sdist)} entries):", *sdist, sep="\n  ")

# Every file of the package in the checkout (modules, py.typed, any data file), in both archives.
package = sorted(
    path.relative_to(src).as_posix()
    for path in Path(src, "finetune_strategies").rglob("*")
    if path.is_file() and "__pycache__" not in path.parts
)
info = f"finetune_strategies-{version}.dist-info"
expected_wheel = [*package, f"{info}/licenses/LICENSE", f"{info}/METADATA", f"{info}/entry_points.txt"]
expected_wheel += [f"finetune_strategies/{name}/__init__.py" for name in subpackages]
expected_sdist = [*package, "LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml"]
missing = [f"wheel: {name}" for name in expected_wheel if name not in wheel]
missing += [f"sdist: {name}" for name in expected_sdist if name not in sdist]
if "finetune_strategies/py.typed" not in package:
    missing.append("checkout: finetune_strategies/py.typed")
if missing:
    sys.exit("missing from the distributions:\n  " + "\n  ".join(missing))
print(f"both hold all {len(package)} files of the package ({', '.join(subpackages)}, py.typed); "
      "the wheel LICENSE, the sdist LICENSE, CHANGELOG.md and README.md")
EOF

step "the wheel alone, with its core dependencies, in a fresh venv"
"$work/tools/bin/uv" venv -q -p "$python" "$work/venv"
"$work/tools/bin/uv" pip install -q -p "$work/venv/bin/python" "$wheel"
mkdir "$work/run" && cd "$work/run" && unset PYTHONPATH  # no checkout on sys.path

"$work/venv/bin/python" - "$version" "$work/venv" "${CORE_SUBPACKAGES[@]}" <<'EOF'
import importlib
import importlib.util
import sys
from pathlib import Path

version, venv, *subpackages = sys.argv[1:]
for extra_module in ("sklearn", "matplotlib", "transformers"):
    assert importlib.util.find_spec(extra_module) is None, f"{extra_module} is installed without its extra"
import finetune_strategies

location = Path(finetune_strategies.__file__).resolve()
assert location.is_relative_to(Path(venv).resolve()), f"imported from {location}, not from the venv"
assert finetune_strategies.__version__ == version, (finetune_strategies.__version__, version)
assert (location.parent / "py.typed").is_file()
for name in subpackages:
    importlib.import_module(f"finetune_strategies.{name}")
importlib.import_module("finetune_strategies.schedule")  # a 0.1 module path, through the alias finder
try:
    finetune_strategies.plot_drift({"run": [{"layer": 0.1}]}, "drift.png")
except finetune_strategies.MissingDependencyError as error:
    assert 'pip install "finetune-strategies[demo]"' in str(error), error
else:
    raise AssertionError("plot_drift ran without matplotlib")
try:
    finetune_strategies.text.TextClassifier(backbone={"model_type": "bert"}, num_labels=2)
except finetune_strategies.MissingDependencyError as error:
    assert 'pip install "finetune-strategies[text]"' in str(error), error
else:
    raise AssertionError("TextClassifier was built without transformers")
print(f"finetune_strategies {version} from {location.parent}: {', '.join(subpackages)} import; "
      "plot_drift names the demo extra, TextClassifier the text extra")
EOF

step "finetune-strategies --help"
"$work/venv/bin/finetune-strategies" --help >"$work/help.txt"
grep -q "usage: finetune-strategies" "$work/help.txt" || { cat "$work/help.txt"; exit 1; }

step "finetune-strategies demo, without the demo extra"
status=0
"$work/venv/bin/finetune-strategies" demo --fast >"$work/demo.out" 2>"$work/demo.err" || status=$?
cat "$work/demo.err"
if [ "$status" -ne 2 ] || [ "$(wc -l <"$work/demo.err")" -ne 1 ] \
  || ! grep -qF 'pip install "finetune-strategies[demo]"' "$work/demo.err"; then
  echo "expected exit status 2 and one line naming the demo extra; got status $status" >&2
  exit 1
fi

echo "packaging checks passed in $((SECONDS - start)) s"
