"""How close is a PAN scan to its physical limit, one plain forward pass?

Times, in one process, over the same images and batches, interleaved and repeated (the
order of the methods rotates from one repeat to the next):
  forward    plain forward pass (inference_mode, channels_last input)
  scan       scan() with all hooks, native padding
  find_pans  find_pans(): native + circular null in one pass over the images
  naive      a reference that stores every candidate conv output and reduces afterwards
and prints medians and the ratios scan/forward, find_pans/forward and naive/scan. A ratio
is the median over repeats of the two methods' times within one repeat, so that a slow
spell of the machine hits both sides of it. Peak memory is measured in fresh child
processes (peak RSS above the process with model and photos loaded, glibc's default
allocator settings), with images streamed in batches, for two numbers of images: a
scan's peak must not grow with them.

    python benchmarks/scan_overhead.py            # MobileNetV2 + EfficientNet-Lite0
    python benchmarks/scan_overhead.py --quick    # under a minute
    python benchmarks/scan_overhead.py --models resnet18 --random-init
This is a benchmark, not a test: it asserts nothing about time. `make bench` runs the
quick mode with the allocator settings of the Makefile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from pan_utils import bundled_images, find_pans, load_model, scan
from pan_utils.engine import kernels
from pan_utils.engine.padding import discover
from pan_utils.engine.probes import BundledProbe


def image_batches(n: int, size: int, batch: int, mean, std, seed: int = 0):
    """The bundled probes as the CLI streams them (``BundledProbe``): memory does not
    depend on ``n``."""
    yield from BundledProbe(n, size, seed=seed, mean=mean, std=std).batches(batch)


def plain_forward(model, batches) -> None:
    with torch.inference_mode():
        for x in batches:
            model(x.contiguous(memory_format=torch.channels_last))


def naive_scan(model, batches) -> dict:
    """Store every candidate conv output, then reduce: the memory-hungry reference."""
    batches = iter(batches)
    first = next(batches)
    sites = [s for s in discover(model, tuple(first.shape[-2:])) if s.is_candidate]
    stored: dict[str, list[torch.Tensor]] = {s.name: [] for s in sites}
    hooks = [s.module.register_forward_hook(
        lambda m, i, o, n=s.name: stored[n].append(o.clone())) for s in sites]
    try:
        plain_forward(model, [first, *batches])
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for s in sites:
        y = torch.cat(stored.pop(s.name))
        t, b, l, r = s.band_widths(out_hw=tuple(y.shape[-2:]))
        ho, wo = y.shape[-2:]
        inner = y[:, :, t:ho - b, l:wo - r]
        sigma = inner.transpose(0, 1).flatten(1).std(1)
        contrast = y[:, :, :t, l:wo - r].mean((2, 3)) - inner.mean((2, 3)) if t else None
        out[s.name] = (sigma, None if contrast is None else contrast.mean(0) / sigma)
        del y, inner
    return out


METHODS = {
    "forward": plain_forward,
    "scan": lambda m, b: scan(m, b, progress=False),
    "find_pans": lambda m, b: find_pans(m, b, progress=False),
    "naive": naive_scan,
}


def _status_mb(field: str) -> float | None:
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """Reset the peak-RSS mark where Linux allows it; return the current RSS (MB)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return _status_mb("VmRSS") or peak_rss_mb()


def peak_rss_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(args) -> None:
    """Run one method once, streaming images; print peak RSS growth above the process
    with the model and photos loaded (so a forward pass's own activations count)."""
    torch.set_num_threads(args.threads)
    model, prep = load_model(args.model, pretrained=not args.random_init)
    size = args.image_size or prep.input_size[0]
    x = bundled_images(2, size, mean=prep.mean, std=prep.std)  # photos decoded and cached
    METHODS["scan"](model, [x])  # compiled kernel loaded before the baseline
    base = reset_peak_rss()
    batches = image_batches(args.n_images, size, args.batch_size, prep.mean, prep.std)
    METHODS[args.child](model, list(batches) if args.child == "naive" else batches)
    print(json.dumps({"peak_growth_mb": peak_rss_mb() - base}))


def measure_memory(args, model: str, method: str, n: int) -> float:
    cmd = [sys.executable, __file__, "--child", method, "--model", model, "--n-images",
           str(n), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if args.random_init:
        cmd.append("--random-init")
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    # glibc's defaults: freed maps go back to the kernel, so peak RSS is the peak of live
    # memory, not of what the tuned allocator keeps cached for the next batch.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mb"]


def bench_model(args, name: str) -> None:
    model, prep = load_model(name, pretrained=not args.random_init)
    size = args.image_size or prep.input_size[0]
    batches = list(image_batches(args.n_images, size, args.batch_size, prep.mean, prep.std))
    methods = [m for m in METHODS if m != "naive" or not args.skip_naive]
    times: dict[str, list[float]] = {m: [] for m in methods}
    for m in methods:  # warm-up: first-call costs (allocator, compiled kernel) are not timed
        METHODS[m](model, batches[:1])
    for r in range(args.repeats):
        for m in methods[r % len(methods):] + methods[:r % len(methods)]:
            t0 = time.perf_counter()
            METHODS[m](model, batches)
            times[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"\n{name} ({'random-init' if args.random_init else 'pre-trained'}), "
          f"{args.n_images} images {size}x{size}, batch {args.batch_size}, "
          f"{args.repeats} repeats")
    for m in methods:
        spread = ", ".join(f"{v:.2f}" for v in times[m])
        print(f"  {m:10s} median {med[m]:7.2f} s   ({spread})  "
              f"{args.n_images / med[m]:6.1f} img/s")

    def ratio(a: str, b: str, note: str) -> None:
        per_repeat = [x / y for x, y in zip(times[a], times[b])]
        print(f"  ratio {a + '/' + b:18s} {statistics.median(per_repeat):.3f}   "
              f"(repeats {min(per_repeat):.3f}-{max(per_repeat):.3f}) {note}")

    ratio("scan", "forward", "target <= 1.2")
    ratio("find_pans", "forward", "two padding modes per batch: limit 2.0")
    if "naive" in med:
        ratio("naive", "scan", "")
    if args.memory:
        small, large = args.memory
        measured = ("scan",) if args.quick else ("forward", "scan", "find_pans") + (
            () if args.skip_naive else ("naive",))
        runs = [(m, n) for m in measured
                for n in ((small, large) if m != "naive" or args.naive_memory else (small,))]
        # Children run side by side (peak RSS is per process): their start-up, mostly
        # single-threaded imports and model loading, would otherwise dominate the wall time.
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            mem = dict(zip(runs, pool.map(lambda r: measure_memory(args, name, *r), runs)))
        for m in measured:
            text = "   ".join(f"N={n}: {v:7.1f} MB" for (m2, n), v in mem.items() if m2 == m)
            print(f"  peak memory {m:10s} {text}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["mobilenet_v2", "efficientnet_lite0"])
    ap.add_argument("--random-init", action="store_true",
                    help="random weights (any timm/torchvision name works offline)")
    ap.add_argument("--n-images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--memory", type=int, nargs=2, default=[64, 512], metavar=("N1", "N2"),
                    help="numbers of images for the peak-memory comparison")
    ap.add_argument("--no-memory", dest="memory", action="store_const", const=None)
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-memory", action="store_true",
                    help="also measure the naive reference's memory at N2 (several GB)")
    ap.add_argument("--quick", action="store_true",
                    help="MobileNetV2 only, 64 images, 3 repeats, scan memory "
                         "at 32 vs 128")
    ap.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child_memory(args)
    torch.set_num_threads(args.threads)
    malloc = {k: os.environ.get(k, "unset")
              for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, compiled scan kernel: "
          f"{'yes' if kernels.available() else 'no (PyTorch path)'}")
    print("allocator:", ", ".join(f"{k}={v}" for k, v in malloc.items()),
          "(make bench sets both: see the Makefile)")
    if args.quick:
        args.models, args.n_images, args.repeats = args.models[:1], 64, 3
        args.memory = [32, 128] if args.memory else None
    for name in args.models:
        bench_model(args, name)


if __name__ == "__main__":
    main()
