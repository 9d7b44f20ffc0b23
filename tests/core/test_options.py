"""The options every strategy takes are written in several forms; each test fails when one form differs.

The forms: the ``StrategyOptions`` TypedDict (types), ``FinetuningStrategy.__init__`` (types, defaults),
``OPTION_DOCS`` (documented defaults, help), the docstrings generated from it, the table in
``docs/strategies.md``, and the CLI help of every strategy class.
"""

from __future__ import annotations

import ast
import inspect
import re
import typing
from pathlib import Path

import docstring_parser
import pytest

from finetune_strategies import FinetuningStrategy, StrategyOptions, available_strategies
from finetune_strategies.cli.app import main
from finetune_strategies.core.options import OPTION_DOCS
from finetune_strategies.strategies.registry import registered_factory

DOCS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "strategies.md"
DEFAULT_IN_HELP = re.compile(r"Default: ``(?P<source>.+?)``\.$")


def option_parameters() -> list[inspect.Parameter]:
    """The parameters of ``FinetuningStrategy.__init__`` after ``self``: the options."""
    return list(inspect.signature(FinetuningStrategy.__init__).parameters.values())[1:]


SIGNATURE_DEFAULTS = {p.name: p.default for p in option_parameters()}


def value_of(source: str) -> object:
    """The value a documented default stands for: a Python literal, or a power such as ``2**31``."""
    node = ast.parse(source.strip(), mode="eval").body
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return ast.literal_eval(node.left) ** ast.literal_eval(node.right)
    return ast.literal_eval(node)


def same_default(source: str, name: str) -> bool:
    """Whether ``source`` is the signature's default of option ``name``, of the same type (10 is not 10.0)."""
    value, default = value_of(source), SIGNATURE_DEFAULTS[name]
    return type(value) is type(default) and value == default


def without_spaces(text: str) -> str:
    return "".join(text.split())


def strategy_classes() -> list[type[FinetuningStrategy]]:
    """The base and every built-in class registered under a name (``*_deepspeed`` names share their class)."""
    classes: dict[str, type[FinetuningStrategy]] = {"FinetuningStrategy": FinetuningStrategy}
    for name in available_strategies():
        factory, _ = registered_factory(name)
        if isinstance(factory, type) and factory.__module__.startswith("finetune_strategies."):
            assert issubclass(factory, FinetuningStrategy)
            classes.setdefault(factory.__name__, factory)
    assert len(classes) > 5
    return list(classes.values())


# ------------------------------------------------------------------ names, types and defaults in the code
def test_every_form_names_the_same_options_in_the_same_order():
    typed_dict = list(typing.get_type_hints(StrategyOptions))
    assert [p.name for p in option_parameters()] == typed_dict
    assert list(OPTION_DOCS) == typed_dict
    assert all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in option_parameters())


def test_the_typed_dict_and_the_signature_give_every_option_the_same_type():
    signature = typing.get_type_hints(FinetuningStrategy.__init__)
    del signature["return"]
    typed_dict = typing.get_type_hints(StrategyOptions)
    differing = {
        name: (typed_dict[name], signature.get(name)) for name in typed_dict if typed_dict[name] != signature.get(name)
    }
    assert not differing, "StrategyOptions type vs FinetuningStrategy.__init__ type"
    assert signature.keys() == typed_dict.keys()


@pytest.mark.parametrize("name", list(OPTION_DOCS))
def test_the_documented_default_is_the_signature_default(name):
    assert same_default(OPTION_DOCS[name].default, name), (OPTION_DOCS[name].default, SIGNATURE_DEFAULTS[name])


# ------------------------------------------------------------------ docstrings, docs page, CLI help
@pytest.mark.parametrize("documented", [FinetuningStrategy, StrategyOptions], ids=lambda c: c.__name__)
def test_the_docstring_documents_every_option_with_its_default(documented):
    params = docstring_parser.parse(documented.__doc__ or "", docstring_parser.DocstringStyle.GOOGLE).params
    assert [p.arg_name for p in params] == list(SIGNATURE_DEFAULTS)
    for param in params:
        description = " ".join((param.description or "").split())
        found = DEFAULT_IN_HELP.search(description)
        assert found, f"{param.arg_name}: no 'Default: ``...``.' in {description!r}"
        assert same_default(found["source"], param.arg_name), (param.arg_name, found["source"])


def test_the_docs_page_lists_every_option_with_its_default():
    page = DOCS_PAGE.read_text(encoding="utf-8")
    section = page.split("## Options every strategy takes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| `([^`]+)` \|", section, flags=re.MULTILINE)
    assert [name for name, _ in rows] == list(SIGNATURE_DEFAULTS)
    wrong = [(name, source) for name, source in rows if not same_default(source, name)]
    assert not wrong, f"defaults in {DOCS_PAGE.name} that are not the signature's: {wrong}"


@pytest.mark.parametrize("strategy", strategy_classes(), ids=lambda c: c.__name__)
def test_the_cli_help_of_every_strategy_shows_every_option_and_its_help(strategy, capsys):
    assert main(["fit", "--strategy.help", strategy.__name__]) == 0
    shown = capsys.readouterr().out
    assert f"Help for --strategy.help={strategy.__module__.split('.')[0]}" in shown
    flat = without_spaces(shown)  # argparse wraps the help, at spaces and after hyphens
    for name, doc in OPTION_DOCS.items():
        assert re.search(rf"--strategy\.{name}\b", shown), f"--strategy.{name} is missing"
        assert without_spaces(doc.help) in flat, f"the help of --strategy.{name} is missing"
        assert without_spaces(f"Default: ``{doc.default}``.") in flat, f"the default of --strategy.{name}"


# ------------------------------------------------------------------ each strategy's own parameters
@pytest.mark.parametrize("strategy", strategy_classes(), ids=lambda c: c.__name__)
def test_every_strategy_documents_its_own_parameters(strategy):
    own = [
        p.name
        for p in list(inspect.signature(strategy.__init__).parameters.values())[1:]
        if p.kind is not p.VAR_KEYWORD and p.name not in OPTION_DOCS
    ]
    documented = {
        p.arg_name: p.description
        for p in docstring_parser.parse(strategy.__doc__ or "", docstring_parser.DocstringStyle.GOOGLE).params
    }
    undocumented = [name for name in own if not documented.get(name)]
    assert not undocumented, f"{strategy.__name__}'s docstring has no Args entry for {undocumented}"
