"""How fast a tweak answers: chapter 1 cold against chapter 1 with only tau changed, and an
explorer redraw, measured in one run (docs/METHOD.md §12). Targets: the tau-only rerun
within 5% of the cold one, a redraw within 1 s.

    python benchmarks/tweak.py                      # default profile (minutes: one cold chapter 1)
    python benchmarks/tweak.py --profile smoke
    python benchmarks/tweak.py --notebook           # also the whole notebook 01, through the runner

The cold run uses a fresh, temporary scan store, so nothing stored before counts; the
tweaked run reads that store. `python benchmarks/cli_startup.py` times the CLI's start.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="default", choices=["smoke", "default"])
    ap.add_argument("--tau", type=float, default=2.0, help="the tweaked threshold")
    ap.add_argument("--notebook", action="store_true",
                    help="also run notebooks/01 cold and tweaked through the runner")
    args = ap.parse_args()
    store_dir = tempfile.mkdtemp(prefix="pan-store-")
    os.environ["PAN_UTILS_STORE"] = store_dir  # before the package reads it

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pan_utils.study import figures as plots
    from pan_utils.study.explorer import ExplorerData
    from pan_utils.study.identification import identify_all
    from pan_utils.study.settings import settings

    base = settings(args.profile)
    print(f"profile {args.profile}: {', '.join(base.models)}; {base.n_images} probes; "
          f"store {store_dir}")
    cold_tables, cold = timed(lambda: identify_all(base, progress=False))
    tweak = base.replace(tau=args.tau)
    tables, warm = timed(lambda: identify_all(tweak, progress=False))
    n_cold = cold_tables["pan_counts"].query("weights == 'pretrained'")["pans"].sum()
    n_warm = tables["pan_counts"].query("weights == 'pretrained'")["pans"].sum()
    print(f"chapter 1, cold (tau {base.tau:g}): {cold:.1f} s, {n_cold:g} PANs")
    print(f"chapter 1, only tau changed (tau {args.tau:g}): {warm:.2f} s, {n_warm:g} PANs"
          f" = {100 * warm / cold:.1f}% of cold (target <= 5%)")

    data, load = timed(lambda: ExplorerData(base))
    redraws = []
    for tau in (2.0, 3.5, 5.0):
        def redraw():
            state = data.decide(tau, base.consistency)
            plt.close(plots.pans_per_layer(state["layers"]))
            return state
        redraws.append(timed(redraw)[1])
    print(f"explorer: opened in {load:.2f} s; redraw {max(redraws):.2f} s at most over "
          f"{len(redraws)} slider moves (target <= 1 s)")

    if args.notebook:
        from pan_utils.study.reproduce import run_notebook

        nb = REPO / "notebooks" / "01_identification.ipynb"
        with tempfile.TemporaryDirectory() as out:
            os.environ["PAN_UTILS_STORE"] = tempfile.mkdtemp(prefix="pan-store-nb-")
            _, nb_cold = timed(lambda: run_notebook(nb, Path(out) / "cold", profile=args.profile,
                                                    progress=False))
            _, nb_warm = timed(lambda: run_notebook(nb, Path(out) / "tau", profile=args.profile,
                                                    extra_params={"tau": args.tau},
                                                    progress=False))
        print(f"notebook 01 through the runner: cold {nb_cold:.1f} s, only tau changed "
              f"{nb_warm:.1f} s ({100 * nb_warm / nb_cold:.0f}%: kernel start, imports, "
              "figures and example maps are most of what is left)")


if __name__ == "__main__":
    main()
