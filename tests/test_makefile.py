"""The Makefile's contract: `make help` documents every target, bad profiles stop early."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from pan_utils.study.reproduce import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
TARGETS = ("help", "setup", "reproduce", "smoke", "test", "lab", "bench", "clean")


def _make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)


def test_help_is_the_default_and_lists_every_target():
    out = _make().stdout
    listed = set(re.findall(r"^  ([a-z-]+)\s+\S", out, flags=re.M))
    assert set(TARGETS) <= listed, out


@pytest.mark.parametrize("args, needle", [
    (["PROFILE=bogus"], "unknown PROFILE=bogus"),
    (["PROFILE=paper"], "DATA_DIR"),
])
def test_bad_profile_stops_before_anything_runs(args, needle, tmp_path):
    res = _make("reproduce", *args, f"RESULTS={tmp_path}/r")
    assert res.returncode != 0 and needle in res.stderr
    assert not (tmp_path / "r").exists()


def test_torch_home_stays_inside_the_repository():
    res = _make("-pn", "help")
    assert re.search(rf"^TORCH_HOME := {re.escape(str(REPO_ROOT))}/\.cache/torch$",
                     res.stdout, flags=re.M)
