"""Every private Lightning API this library uses, checked against the installed Lightning.

A Lightning release that renames or reshapes one of them fails here, with a message that names the
API and the installed Lightning and torch versions, instead of deep inside a fit.
"""

from __future__ import annotations

import pytest

from finetune_strategies import ConfigurationError, _lightning


@pytest.mark.parametrize("name", sorted(_lightning.PRIVATE_APIS))
def test_private_api_is_as_expected(name: str) -> None:
    problem = _lightning.PRIVATE_APIS[name]()
    assert problem is None, f"{name} changed in Lightning {_lightning.LIGHTNING_VERSION}: {problem}"


def test_a_changed_api_names_the_versions() -> None:
    class Owner:
        __name__ = "Connector"

    with pytest.raises(ConfigurationError, match=rf"Connector._gone.*Lightning {_lightning.LIGHTNING_VERSION}"):
        _lightning.private(Owner(), "_gone")


def test_a_reshaped_api_is_reported() -> None:
    def moved(other: int) -> None: ...

    class Module:
        __name__ = "lightning.fake"
        resume_start = staticmethod(moved)

    problem = _lightning._has_parameters(Module, "resume_start", ("checkpoint_path",))
    assert problem is not None
    assert "has no parameter ['checkpoint_path']" in problem


def test_no_module_outside_lightning_py_touches_private_lightning_names() -> None:
    """The rule behind this file: private Lightning APIs are used in one module only."""
    import pathlib
    import re

    package = pathlib.Path(_lightning.__file__).parent
    pattern = re.compile(
        r"(?<![A-Za-z_])_configure_optimizers\b|_reorder_callbacks|_checkpoint_connector|_setup_model\b"
        r"|_register_ddp_hooks|_METADATA_FILENAME"
        r"|_remove_autograd_hooks|_prepare_subcommand_parser|\._trainer\b|_loaded_checkpoint|_compiler_ctx"
    )
    offenders = [
        f"{path.relative_to(package)}:{number}"
        for path in package.rglob("*.py")
        if path.name != "_lightning.py"
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if pattern.search(line) and not line.lstrip().startswith("#")
    ]
    assert offenders == [], f"private Lightning APIs used outside _lightning.py: {offenders}"
