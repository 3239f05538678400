"""docs/METHOD.md states every default; its profile table must say what the code runs."""

from __future__ import annotations

import re

import pytest

from pan_utils.study.reproduce import REPO_ROOT
from pan_utils.study.settings import PROFILES

METHOD = (REPO_ROOT / "docs" / "METHOD.md").read_text()
NAMES = ("smoke", "default", "paper")


def _profile_rows() -> dict[str, list[str]]:
    table = METHOD[METHOD.index("### 9.2 Profiles"):]
    rows = {}
    for line in table.splitlines():
        m = re.match(r"^\| `(\w+)`(?: \([^)]*\))? \| (.*) \|$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split(" | ")]
    return rows


def _shown(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("field", ["models", "n_images", "n_eval", "batch_size",
                                   "n_random_draws", "train_seeds", "train_epochs",
                                   "train_patches", "train_test_patches", "train_scan_images",
                                   "train_width", "train_depth", "census_models",
                                   "census_architectures", "census_images",
                                   "census_baseline_seeds", "cure_paddings",
                                   "cure_bn_paddings", "cure_distill_paddings", "cure_params",
                                   "cure_steps", "cure_batch", "cure_n_eval", "cure_n_images",
                                   "cure_train_images", "cure_n_placement", "cure_ablations"])
def test_profile_table_matches_the_code(field):
    row = _profile_rows()[field]
    assert row == [_shown(getattr(PROFILES[n], field)) for n in NAMES], field


def test_no_design_document_is_cited():
    assert "DESIGN" not in METHOD
