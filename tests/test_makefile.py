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


def test_clean_never_removes_a_bad_smoke_dir():
    for bad in ("/", "", "..", ".cache/../..", "results"):
        res = _make("-n", "clean", f"SMOKE_DIR={bad}")
        assert res.returncode != 0 and "rm -rf" not in res.stdout, (bad, res.stdout)
        assert "SMOKE_DIR" in res.stderr


def test_exported_variables_do_not_change_what_make_does():
    import os

    env = {**os.environ, "PROFILE": "bogus", "RESULTS": "/", "SMOKE_DIR": "/",
           "DATA_DIR": "/nowhere"}
    res = subprocess.run(["make", "--no-print-directory", "-n", "clean", "params"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert 'rm -rf -- ".cache/smoke"' in res.stdout and "bogus" not in res.stdout


def test_results_path_with_a_space_is_quoted():
    res = _make("-n", "reproduce", "RESULTS=.cache/my results")
    assert '--out ".cache/my results"' in res.stdout and "--if-changed" in res.stdout


def test_caches_stay_inside_the_repository():
    res = _make("-pn", "help")
    for var in ("MPLCONFIGDIR", "IPYTHONDIR", "JUPYTER_RUNTIME_DIR"):
        assert re.search(rf"^{var} := {re.escape(str(REPO_ROOT))}/\.cache/", res.stdout,
                         flags=re.M), var
