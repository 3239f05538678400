"""How fast does the census go, and how does it scale with Dask workers?

Runs the same census (no cache) on a LocalCluster of 1 worker, then of 2, 4, ... (as
given), one thread each, and prints models per minute, the speed-up over 1 worker, and
what the full architecture census (every timm architecture and torchvision classifier)
would take at the measured rate. Cluster start-up is timed apart: it is paid once per
census, not per model.

    python benchmarks/census_throughput.py                      # curated architectures
    python benchmarks/census_throughput.py --workers 1 2 4
    python benchmarks/census_throughput.py --with-weights mobilenet_v2 crnn_english

This is a benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from pan_utils.study.census import CensusJob, census_names, run_census
from pan_utils.study.cluster import census_client
from pan_utils.study.settings import settings


def measure(jobs: list[CensusJob], workers: int) -> dict:
    s = settings("default", workers=workers)
    start = time.perf_counter()
    with census_client(workers=workers) as client:
        client.wait_for_workers(workers)
        ready = time.perf_counter()
        table = run_census(jobs, s, client=client, progress=False)
    t = table.attrs["timings"]
    return {"workers": workers, "startup_s": ready - start, "wall_s": t["wall_seconds"],
            "models_per_min": t["models_per_minute"], "task_s": t["task_seconds"],
            "errors": int((table["status"] == "error").sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--architectures", default="curated",
                    help="census spec of the architecture-only census (default: curated)")
    ap.add_argument("--with-weights", nargs="*", default=[], metavar="MODEL",
                    help="also census these models with their weights (scans)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    jobs = ([CensusJob(m, "pretrained") for m in args.with_weights]
            + [CensusJob(m, "none") for m in census_names(args.architectures)])
    full = len(census_names("all"))
    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs; "
          f"{len(jobs)} models ({len(args.with_weights)} with weights)")
    base = None
    for w in args.workers:
        r = measure(jobs, w)
        base = base or r["models_per_min"]
        print(f"  {w} worker(s): {r['models_per_min']:6.1f} models/min "
              f"(wall {r['wall_s']:.1f} s, task time {r['task_s']:.1f} s, cluster start "
              f"{r['startup_s']:.1f} s, {r['errors']} error rows), speed-up "
              f"{r['models_per_min'] / base:.2f}x; all {full} architectures: "
              f"~{full / r['models_per_min']:.0f} min")


if __name__ == "__main__":
    main()
