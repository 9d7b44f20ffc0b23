"""The YAML that the commands write (``--print_config``, the ``config.yaml`` saved with a run) reads
back as written.

jsonargparse writes YAML with PyYAML's ``safe_dump`` but reads it with its own loader, and the two
disagree on some strings:

* PyYAML leaves ``1e3`` unquoted (a string in YAML 1.1), and jsonargparse's loader reads it as the
  float 1000.0, so ``--data.train_folder 1e3`` printed and fed back with ``--config`` fails to parse;
* PyYAML writes NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR raw inside quoted strings, where
  reading folds them into spaces, so such a folder name changes on the way back.

:func:`dump_yaml` is ``safe_dump`` with jsonargparse's settings, except that a string that
jsonargparse would not read back as itself is written double-quoted, where every character is
escaped as needed. :func:`use_round_trip_yaml` makes it jsonargparse's YAML dumper.
"""

from __future__ import annotations

from typing import Any

import yaml
from jsonargparse import get_loader, set_dumper

_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


class _Dumper(yaml.SafeDumper):
    """``SafeDumper`` whose strings read back unchanged with jsonargparse's loader."""


def _reads_back(value: str) -> bool:
    if any(c in value for c in _LINE_BREAKS):
        return False
    try:
        return bool(get_loader("yaml")(value) == value)
    except yaml.YAMLError:
        return False


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = None if _reads_back(value) else '"'
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """``data`` as YAML (block style, unicode, keys in order), every string reading back as itself."""
    return yaml.dump(data, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def use_round_trip_yaml() -> None:
    """Make :func:`dump_yaml` jsonargparse's ``yaml`` dumper (for every parser in this process)."""
    set_dumper("yaml", dump_yaml)
