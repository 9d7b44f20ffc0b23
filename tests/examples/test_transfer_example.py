"""The transfer-learning example runs end to end in its fast form and prints its table."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from transfer_tools import one_thread  # noqa: F401

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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
        "fine-tuned whole (no_freeze)",
        "fine-tuned whole + WiSE-FT (a=0.5)",
        "fine-tuned whole, l2_sp=0.01",
        "from scratch on the same points",
    ]
    errors = {k: float(v) for k, v in rows.items()}
    assert errors["transfer, all stages"] < errors["pretrained on cheap data only"]
    assert errors["transfer, all stages"] < errors["from scratch on the same points"]
    assert errors["fine-tuned whole, l2_sp=0.01"] < errors["pretrained on cheap data only"]
    plain, halfway = errors["fine-tuned whole (no_freeze)"], errors["fine-tuned whole + WiSE-FT (a=0.5)"]
    assert halfway != plain, "WiSE-FT moved the fine-tuned weights"
    assert (tmp_path / "seed0" / "transfer" / "all_layers" / "final.ckpt").is_file()
