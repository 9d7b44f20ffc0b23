"""The selector language's patterns (``*`` globs and ``re:`` expressions) and its errors; the dotted and
position forms are pinned in tests/transfer/test_transfer_config.py, where they were born."""

from __future__ import annotations

import pytest
from conftest import TinyViT

from finetune_strategies import SelectorError, resolve_selector, resolve_selectors
from finetune_strategies.model.selectors import check_selector, outermost


@pytest.fixture(scope="module")
def vit() -> TinyViT:
    return TinyViT()


def test_globs_match_whole_dotted_names(vit: TinyViT) -> None:
    assert resolve_selectors(vit, ["backbone.blocks.*"]) == [f"backbone.blocks.{i}" for i in range(4)]
    assert resolve_selector(vit, "backbone.blocks.?.attn") == [f"backbone.blocks.{i}.attn" for i in range(4)]
    assert resolve_selectors(vit, ["*.qkv"]) == [f"backbone.blocks.{i}.attn.qkv" for i in range(4)]


def test_regular_expressions_after_re(vit: TinyViT) -> None:
    assert resolve_selectors(vit, [r"re:backbone\.blocks\.(2|3)"]) == ["backbone.blocks.2", "backbone.blocks.3"]
    assert resolve_selectors(vit, [r"re:.*(fc1|fc2)$"]) == [
        f"backbone.blocks.{i}.mlp.{fc}" for i in range(4) for fc in ("fc1", "fc2")
    ]


def test_lists_drop_duplicates_and_nested_names(vit: TinyViT) -> None:
    selected = resolve_selectors(vit, ["backbone.blocks.1.attn", "backbone.blocks[0:2]", "re:backbone\\.blocks\\.0"])
    assert selected == ["backbone.blocks.0", "backbone.blocks.1"]
    assert outermost(["a.b", "a", "a.b.c", "ab", "a"]) == ["a", "ab"]


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("backbone.blokcs.*", r"matches no module of TinyViT\. Did you mean 'backbone\.blocks'"),
        ("re:encoder\\.layer\\d+", "matches no module"),
        ("re:(unclosed", "not a valid regular expression"),
        ("backbone.blocks[9]", "position 9 is out of range"),
    ],
)
def test_errors_say_what_was_wrong(vit: TinyViT, selector: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        resolve_selector(vit, selector)


def test_syntax_is_checked_without_a_model() -> None:
    assert check_selector("backbone.blocks[0:2].attn") == "backbone.blocks[0:2].attn"
    for bad in ("", "re:(", "net[a]", "net..0"):
        with pytest.raises(SelectorError):
            check_selector(bad)
