"""The transfer-learning example runs end to end in its fast form and prints its table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from _transfer_tools import one_thread  # noqa: F401

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_fast_example_prints_the_comparison(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    sys.modules.pop("transfer_regression", None)
    import transfer_regression

    assert transfer_regression.main(["--fast", "--seeds", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| ([^|]+?) \| ([0-9.]+) ± nan \|$", out, re.MULTILINE))
    assert list(rows) == [
        "pretrained on cheap data only",
        "transfer, stage 1 only (fix_first_last)",
        "transfer, all stages",
        "from scratch on the same points",
    ]
    errors = {k: float(v) for k, v in rows.items()}
    assert errors["transfer, all stages"] < errors["pretrained on cheap data only"]
    assert errors["transfer, all stages"] < errors["from scratch on the same points"]
    assert (tmp_path / "seed0" / "transfer" / "all_layers" / "final.ckpt").is_file()
