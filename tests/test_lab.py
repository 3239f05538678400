"""`make lab`: JupyterLab starts (as root too), takes LAB_ARGS, and serves the project kernel.

The command is the Makefile's own (`make -n lab`), run on a free loopback port with a known
token, polled until /api/kernelspecs answers, then stopped by its PID.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KERNEL_NAME, KERNEL_DISPLAY = "python3", "Python 3 (pan_utils)"  # make setup installs it
START_TIMEOUT = 120  # s: a cold JupyterLab start on a busy 2-core machine
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lab_command(lab_args: str) -> tuple[dict[str, str], list[str]]:
    """(environment assignments, argv) of the recipe `make lab LAB_ARGS=...` would run, for
    the venv this test runs in (VENV=sys.prefix)."""
    res = subprocess.run(["make", "--no-print-directory", "-n", "lab", f"VENV={sys.prefix}",
                          f"LAB_ARGS={lab_args}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if re.search(r"/jupyter lab\b", line)]
    assert len(lines) == 1, res.stdout
    words = shlex.split(lines[0])
    env = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def test_lab_command_adds_allow_root_as_root_and_passes_lab_args():
    env, argv = lab_command("--no-browser --port 8899")
    assert env == {"JUPYTER_PREFER_ENV_PATH": "1"}
    assert argv[0] == os.path.join(sys.prefix, "bin", "jupyter") and argv[1] == "lab"
    assert argv[-3:] == ["--no-browser", "--port", "8899"]
    assert ("--allow-root" in argv) == (os.geteuid() == 0)
    assert f"--notebook-dir={ROOT}" in argv


def _get(url: str, token: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_make_lab_serves_the_project_kernel_and_stops_by_pid(tmp_path):
    port, token = _free_port(), secrets.token_hex(16)
    env_add, argv = lab_command(f"--no-browser --port {port} --ServerApp.ip=127.0.0.1 "
                                f"--ServerApp.token={token} --ServerApp.port_retries=0")
    # What the Makefile exports for the recipe, pointed at this test's own folders.
    env = {**os.environ, **env_add, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "IPYTHONDIR": str(tmp_path / "ipython")}
    log = (tmp_path / "lab.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api/kernelspecs"
    status, body = None, b""
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                status, body = _get(url, token)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                status = None
            if status == 200:
                break
            time.sleep(0.5)
        early_exit = proc.poll()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()
    text = (tmp_path / "lab.log").read_text(errors="replace")
    assert early_exit is None, f"jupyter lab exited with {early_exit}:\n{text[-2000:]}"
    assert status == 200, f"no HTTP 200 from {url} in {START_TIMEOUT} s:\n{text[-2000:]}"
    specs = json.loads(body)["kernelspecs"]
    assert KERNEL_NAME in specs, sorted(specs)
    assert specs[KERNEL_NAME]["spec"]["display_name"] == KERNEL_DISPLAY
    assert proc.returncode is not None  # stopped: SIGTERM ends the server
    assert _port_closed(port)


def _port_closed(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0
