"""Optional extras: what needs them fails with a MissingDependencyError naming the pip line, and the
core (the package, its CLI's help) imports without them.

A missing module is simulated by ``sys.modules[name] = None``, which makes its import raise
ImportError; the functions under test run for real.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from finetune_strategies import MissingDependencyError, plot_drift, resolve_strategy
from finetune_strategies.cli.app import main
from finetune_strategies.errors import require

ROOT = Path(__file__).resolve().parents[1]
DEMO_PIP = 'pip install "finetune-strategies[demo]"'
# The demo's modules, imported afresh so that their check of the extra runs again.
DEMO_MODULES = (
    "finetune_strategies.demo",
    "finetune_strategies.demo.experiment",
    "finetune_strategies.demo.report",
    "finetune_strategies.cli.demo",
)


def hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make ``modules`` unimportable, and forget the demo's modules that imported them."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    for name in DEMO_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)


def test_require_names_the_extra_and_is_an_import_error(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "sklearn")
    with pytest.raises(ImportError) as caught:
        require("sklearn", "demo", what="Digits", package="scikit-learn")
    assert isinstance(caught.value, MissingDependencyError)
    message = str(caught.value)
    assert message.startswith("Digits needs scikit-learn, from the [demo] extra of finetune-strategies: ")
    assert DEMO_PIP in message
    assert "\n" not in message


def test_require_returns_the_module() -> None:
    assert require("json", "demo", what="JSON") is sys.modules["json"]


def test_plot_drift_without_matplotlib(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    hide(monkeypatch, "matplotlib", "matplotlib.pyplot")
    with pytest.raises(
        MissingDependencyError, match=r'plot_drift needs matplotlib, .*pip install "finetune-strategies\[demo\]"'
    ):
        plot_drift({"run": [{"layer": 0.5}]}, tmp_path / "drift.png")
    assert not (tmp_path / "drift.png").exists()


def test_lora_without_peft_names_the_peft_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    hide(monkeypatch, "peft")
    with pytest.raises(MissingDependencyError, match=r'pip install "finetune-strategies\[peft\]"'):
        resolve_strategy("lora")


@pytest.mark.parametrize("missing", ["transformers", "tokenizers"])
def test_the_text_task_without_the_text_extra_names_it(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    from finetune_strategies.text import TextClassificationData, TextClassifier

    hide(monkeypatch, missing)
    text_pip = r'pip install "finetune-strategies\[text\]"'
    if missing == "transformers":
        with pytest.raises(MissingDependencyError, match=rf"^TextClassifier needs transformers, .*{text_pip}"):
            TextClassifier(backbone={"model_type": "bert"}, num_labels=2)
    data = TextClassificationData.from_lists(["good", "bad"], ["pos", "neg"])  # reading texts needs no extra
    assert data.labels == ["neg", "pos"]
    other = ({"transformers", "tokenizers"} - {missing}).pop()
    named = missing if importlib.util.find_spec(other) else "(transformers|tokenizers)"  # both absent: either
    with pytest.raises(MissingDependencyError, match=rf"^Building a tokenizer .* needs {named}, .*{text_pip}"):
        data.setup("fit")


@pytest.mark.parametrize(("missing", "named"), [("sklearn.datasets", "scikit-learn"), ("matplotlib", "matplotlib")])
def test_demo_command_without_the_extra_is_a_usage_error(monkeypatch, capsys, tmp_path, missing, named) -> None:
    hide(monkeypatch, missing)
    assert main(["demo", "--fast", f"--output={tmp_path}"]) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert line.startswith("finetune-strategies demo: error: The demo")
    assert f"needs {named}" in line
    assert DEMO_PIP in line
    assert not any(tmp_path.iterdir()), "nothing ran"


def test_core_imports_and_cli_run_without_scikit_learn(tmp_path) -> None:
    """A fresh interpreter where scikit-learn cannot be imported: the package, every core subpackage and
    ``--help`` work, and ``demo`` exits with status 2 and the pip line.

    matplotlib and transformers cannot be hidden this way: torchmetrics imports them whenever their metadata
    says they are installed. .ci/packaging.sh runs the same checks in a venv that has none of them.
    """
    script = textwrap.dedent(
        """
        import sys
        sys.modules["sklearn"] = None
        import finetune_strategies
        assert finetune_strategies.__file__.startswith(sys.argv[1]), finetune_strategies.__file__
        import finetune_strategies.checkpointing, finetune_strategies.cli.app, finetune_strategies.core
        import finetune_strategies.image, finetune_strategies.model, finetune_strategies.recipes
        import finetune_strategies.strategies, finetune_strategies.text, finetune_strategies.transfer
        from finetune_strategies.cli.app import main
        assert main(["--help"]) == 0
        sys.exit(main(["demo"]))
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-c", script, str(ROOT)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert run.returncode == 2, run.stderr
    assert "usage: finetune-strategies" in run.stdout
    (line,) = run.stderr.strip().splitlines()
    assert "The demo needs scikit-learn" in line
    assert DEMO_PIP in line


def module_level_imports(tree: ast.AST) -> list[str]:
    """The modules imported by ``tree`` outside function bodies."""
    if isinstance(tree, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return []
    names = [alias.name for alias in tree.names] if isinstance(tree, ast.Import) else []
    names += [tree.module or ""] if isinstance(tree, ast.ImportFrom) else []
    return names + [name for child in ast.iter_child_nodes(tree) for name in module_level_imports(child)]


def test_only_the_demo_imports_the_demo_extra_at_module_level() -> None:
    """Outside finetune_strategies/demo, scikit-learn and matplotlib are imported inside functions only."""
    found = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "finetune_strategies").rglob("*.py"))
        if path.parent.name != "demo"
        for name in module_level_imports(ast.parse(path.read_text()))
        if name.split(".")[0] in ("sklearn", "matplotlib")
    ]
    assert not found
