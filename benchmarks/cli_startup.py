"""CLI start-up: `python -m pan_utils --help` against `python -c "import torch"`, one run.

Targets (issue 23): --help at most 1 s, and faster than importing torch on the same machine
at the same moment. Each command runs ``--repeats`` times, interleaved so that both see the
same load; the median wall time of each is printed with their ratio, and whether the --help
run imported torch (it must not).

    python benchmarks/cli_startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 1.0


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=300)
    return time.perf_counter() - start


def imports_torch(argv: list[str], env: dict[str, str]) -> bool:
    res = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in res.stderr.splitlines())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each (default 5)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    help_cmd = [sys.executable, "-m", "pan_utils", "--help"]
    torch_cmd = [sys.executable, "-c", "import torch"]
    wall(help_cmd, env), wall(torch_cmd, env)  # warm the file cache for both
    runs: dict[str, list[float]] = {"help": [], "torch": []}
    for _ in range(args.repeats):
        runs["help"].append(wall(help_cmd, env))
        runs["torch"].append(wall(torch_cmd, env))
    h, t = statistics.median(runs["help"]), statistics.median(runs["torch"])
    print(f"python -m pan_utils --help: {h:.3f} s (median of {args.repeats}; "
          f"min {min(runs['help']):.3f}, max {max(runs['help']):.3f})")
    print(f"python -c 'import torch':   {t:.3f} s (median of {args.repeats}; "
          f"min {min(runs['torch']):.3f}, max {max(runs['torch']):.3f})")
    print(f"ratio --help / import torch: {h / t:.2f} (target < 1)")
    print(f"--help at most {TARGET_S:g} s: {'yes' if h <= TARGET_S else 'NO'}; "
          f"faster than import torch: {'yes' if h < t else 'NO'}; "
          f"--help imports torch: {'YES' if imports_torch(help_cmd, env) else 'no'}")


if __name__ == "__main__":
    main()
