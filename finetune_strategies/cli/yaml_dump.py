"""The YAML that the commands write (``--print_config``, the ``config.yaml`` saved with a run) reads
back as written.

jsonargparse writes YAML with PyYAML's ``safe_dump`` but reads it with its own loader, and the two
disagree on some strings:

* PyYAML leaves ``1e3`` unquoted (a string in YAML 1.1), and jsonargparse's loader reads it as the
  float 1000.0, so ``--data.train_folder 1e3`` printed and fed back with ``--config`` fails to parse;
* PyYAML writes NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR raw inside quoted strings, where
  reading folds them into spaces, so such a folder name changes on the way back.

:func:`dump_yaml` is ``safe_dump`` with jsonargparse's settings, except that strings are quoted by
jsonargparse's reading rules (a float may have an exponent without a dot or a sign), and a string
holding such a line break is written double-quoted, where it is escaped. :func:`use_round_trip_yaml`
makes it jsonargparse's YAML dumper.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from jsonargparse import set_dumper

_LINE_BREAKS = ("\x85", "\u2028", "\u2029")
_FLOAT = re.compile(  # what jsonargparse's loader reads as a float, wider than YAML 1.1's rule
    r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
    |[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _Dumper(yaml.SafeDumper):
    """``SafeDumper`` that quotes every string jsonargparse would not read back as that string."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if any(c in value for c in _LINE_BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Dumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """``data`` as YAML (block style, unicode, keys in order), every string reading back as itself."""
    return yaml.dump(data, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, sort_keys=False)


def use_round_trip_yaml() -> None:
    """Make :func:`dump_yaml` jsonargparse's ``yaml`` dumper (for every parser in this process)."""
    set_dumper("yaml", dump_yaml)
