"""The Makefile's contract: `make help` documents every target, bad profiles stop early."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from pan_utils.study.reproduce import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
TARGETS = ("help", "setup", "reproduce", "smoke", "test", "verify", "lab", "bench", "clean")


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


def _recipe(target: str, *args: str) -> list[str]:
    """The commands `make TARGET` runs after setup (setup's own steps dropped)."""
    res = _make("-n", target, *args)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    return [ln for ln in lines if "pip" not in ln and "ipykernel install" not in ln
            and "install_offline_weights" not in ln and not ln.startswith(("test -x", "touch"))]


def test_test_runs_the_layers_the_suite_and_check_last():
    steps = _recipe("test")
    assert [s.split()[0].rsplit("/", 1)[-1] for s in steps][:1] == ["lint-imports"]
    assert any(s.endswith("-m pytest") for s in steps)  # the suite: smoke run + nbval
    assert "pan_utils.study.reproduce --check --out results" in steps[-1]


def test_verify_runs_nbval_over_the_committed_results_or_the_named_notebooks():
    (step,) = [s for s in _recipe("verify") if "pan_utils.study.verify" in s]
    assert '--results "results"' in step
    (step,) = [s for s in _recipe("verify", "VERIFY_NOTEBOOKS=results/notebooks/02_x.ipynb")
               if "pan_utils.study.verify" in s]
    assert step.endswith("results/notebooks/02_x.ipynb")


def test_reproduce_says_why_it_reruns():
    (step,) = [s for s in _recipe("reproduce") if "pan_utils.study.reproduce" in s]
    assert "--if-changed" in step  # the runner prints the reason of each rerun
