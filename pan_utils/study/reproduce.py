"""The papermill runner behind ``make reproduce``: executes the notebooks, writes them
atomically, and keeps ``manifest.json`` and the results index."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..engine.io import atomic_write, readable
from .settings import PROFILES, Settings, settings

# --------------------------------------------------------------------------------------
# The runner: executes notebooks with papermill, writes them atomically, keeps a manifest.
# --------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[2]
KERNEL_NAME = "python3"
DEFAULT_TIMEOUT = 3600  # seconds per cell: a hung cell fails the run instead of blocking it
PACKAGES = ("torch", "torchvision", "timm", "numpy", "pandas", "scipy", "matplotlib",
            "seaborn", "pillow", "scikit-image", "scikit-learn", "tqdm", "papermill",
            "nbclient", "nbformat", "ipykernel", "pan_utils")


class NotebookError(RuntimeError):
    """A notebook failed to execute; ``failed_path`` holds the partially executed copy."""

    def __init__(self, message: str, failed_path: Path | None = None):
        super().__init__(message)
        self.failed_path = failed_path


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def _portable(path: str | Path, start: str | Path) -> str:
    """``path`` relative to ``start`` when both live in the repository, else absolute.

    Executed notebooks are committed: they must not embed this machine's paths.
    """
    path, start = Path(path).resolve(), Path(start).resolve()
    try:
        path.relative_to(REPO_ROOT)
        start.relative_to(REPO_ROOT)
    except ValueError:
        return str(path)
    return os.path.relpath(path, start)


@contextlib.contextmanager
def _project_kernel():
    """Make kernel ``python3`` mean *this* interpreter, whatever else is installed.

    A kernelspec pointing at ``sys.executable`` goes first on JUPYTER_PATH (highest
    priority), so neither a user-level ``python3`` spec nor a moved .venv can redirect
    the run to another Python.
    """
    with tempfile.TemporaryDirectory(prefix="pan-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (pan_utils)", "language": "python",
                "metadata": {"debugger": True},
                # papermill shows progress per cell; bars stored in a notebook are noise
                "env": {"PAN_UTILS_PROGRESS": "0"}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
        old = os.environ.get("JUPYTER_PATH")
        os.environ["JUPYTER_PATH"] = os.pathsep.join([tmp] + ([old] if old else []))
        try:
            yield KERNEL_NAME
        finally:
            if old is None:
                os.environ.pop("JUPYTER_PATH", None)
            else:
                os.environ["JUPYTER_PATH"] = old


def _sanitise_metadata(path: Path, src: Path, final: Path, cwd: Path) -> None:
    """Replace the temporary/absolute paths papermill records with portable ones."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    pm = nb.metadata.get("papermill", {})
    pm["input_path"] = _portable(src, REPO_ROOT) if _inside_repo(src) else src.name
    pm["output_path"] = _portable(final, REPO_ROOT) if _inside_repo(final) else final.name
    pm.pop("cwd", None)
    # Outputs (warnings, tracebacks, reprs of paths) name this machine's checkout: make
    # them relative to the repository so committed notebooks are the same on every machine.
    root = str(REPO_ROOT) + os.sep
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if "text" in out and root in out["text"]:
                out["text"] = out["text"].replace(root, "")
            for key in ("text/plain", "text/html", "text/markdown"):
                data = out.get("data", {})
                if isinstance(data.get(key), str) and root in data[key]:
                    data[key] = data[key].replace(root, "")
            if "traceback" in out:
                out["traceback"] = [t.replace(root, "") for t in out["traceback"]]
    nb.metadata["kernelspec"] = {"name": KERNEL_NAME, "display_name": "Python 3 (ipykernel)",
                                 "language": "python"}
    nbformat.write(nb, str(path))


def _inside_repo(path: Path) -> bool:
    try:
        Path(path).resolve().relative_to(REPO_ROOT)
        return True
    except ValueError:
        return False


def notebook_parameters(src: str | Path) -> dict[str, Any]:
    """The names and default values of a notebook's ``parameters`` cell."""
    import papermill

    return {name: p["default"] for name, p in papermill.inspect_notebook(str(src)).items()}


def run_notebook(src: str | Path, out_dir: str | Path, profile: str = "smoke",
                 data_dir: str | Path | None = None, extra_params: dict[str, Any] | None = None,
                 timeout: int | None = DEFAULT_TIMEOUT, progress: bool = True,
                 update_manifest: bool = True) -> dict[str, Any]:
    """Execute ``src`` into ``out_dir/notebooks/<name>.ipynb`` with the given profile.

    The notebook runs in its own folder (relative paths in it work), on this interpreter's
    kernel, with ``timeout`` seconds per cell. The executed copy appears only when every
    cell succeeded (written to a temporary file, then renamed); on failure the partial
    copy is kept as ``<name>.failed.ipynb`` and :class:`NotebookError` is raised.
    Returns the manifest entry of the run (also merged into ``out_dir/manifest.json``).
    """
    import papermill

    src = Path(src).resolve()
    out_dir = Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    cwd = src.parent
    nb_dir = out_dir / "notebooks"
    nb_dir.mkdir(parents=True, exist_ok=True)
    final = nb_dir / src.name
    failed = nb_dir / f"{src.stem}.failed.ipynb"

    declared = notebook_parameters(src)
    params: dict[str, Any] = {"profile": profile, "out_dir": _portable(out_dir, cwd)}
    if data_dir is not None:
        params["data_dir"] = str(Path(data_dir).resolve())
    params.update(extra_params or {})
    unknown = sorted(set(extra_params or {}) - set(declared))
    if unknown:
        raise ValueError(f"{src.name} has no parameter(s) {', '.join(unknown)}")
    # data_dir goes only to notebooks that take one; profile/out_dir are required (tests)
    params = {k: v for k, v in params.items() if k in declared}

    fd, tmp_name = tempfile.mkstemp(prefix=f".tmp-{src.stem}.", suffix=".ipynb", dir=nb_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    start = time.perf_counter()
    try:
        with _project_kernel() as kernel:
            papermill.execute_notebook(
                str(src), str(tmp), parameters=params, kernel_name=kernel,
                progress_bar=progress, cwd=str(cwd), execution_timeout=timeout,
                request_save_on_cell_execute=True)
    except BaseException as exc:
        if tmp.exists() and tmp.stat().st_size:
            with contextlib.suppress(Exception):
                _sanitise_metadata(tmp, src, failed, cwd)
            readable(tmp)
            os.replace(tmp, failed)
        else:
            failed = None
        tmp.unlink(missing_ok=True)
        if isinstance(exc, KeyboardInterrupt):
            raise
        reason = _first_line(exc)
        where = f"; partial run kept in {failed}" if failed else ""
        raise NotebookError(f"{src.name} failed: {reason}{where}", failed) from exc
    wall = time.perf_counter() - start
    try:
        _sanitise_metadata(tmp, src, final, cwd)
        readable(tmp)
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    failed.unlink(missing_ok=True)

    entry = {
        "source": _portable(src, REPO_ROOT) if _inside_repo(src) else src.name,
        "executed": f"notebooks/{final.name}",
        "profile": profile,
        "parameters": params,
        "settings": _jsonable(_resolved_settings(profile, params)),
        "wall_time_s": round(wall, 2),
        "finished": _now(),
        "git": git_state(),
    }
    if update_manifest:
        update_manifest_file(out_dir, {src.stem: entry}, profile)
    return entry


def _first_line(exc: BaseException) -> str:
    ename = getattr(exc, "ename", None)
    if ename:  # papermill's PapermillExecutionError: the failing cell's exception
        return f"cell {getattr(exc, 'exec_count', '?')} raised {ename}: {getattr(exc, 'evalue', '')}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _resolved_settings(profile: str, params: dict[str, Any]) -> dict[str, Any] | None:
    fields = set(Settings.__dataclass_fields__) - {"profile"}
    try:
        return settings(profile, **{k: v for k, v in params.items() if k in fields}).as_dict()
    except Exception:  # noqa: BLE001 - the manifest records what it can
        return None


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def git_state() -> dict[str, Any]:
    """Commit of the repository and whether tracked files other than ``results/`` differ
    from it: results are regenerated before they are committed, so they would always count."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                 ":(exclude)results")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "processor": platform.machine(),
                            "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                               else None)
    except Exception:  # noqa: BLE001
        pass
    return info


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    path = Path(out_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def update_manifest_file(out_dir: str | Path, entries: dict[str, dict[str, Any]],
                         profile: str) -> Path:
    """Merge ``entries`` into ``out_dir/manifest.json`` (others keep their previous entry)."""
    manifest = read_manifest(out_dir)
    notebooks = {**manifest.get("notebooks", {}), **entries}
    manifest = {
        "profile": profile,
        "profiles": sorted({e.get("profile", profile) for e in notebooks.values()}),
        "updated": _now(),
        "git": git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "notebooks": dict(sorted(notebooks.items())),
    }
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    return atomic_write(Path(out_dir) / "manifest.json", lambda tmp: Path(tmp).write_text(text))


def write_index(out_dir: str | Path) -> Path:
    """``out_dir/README.md``: what the run produced, linked, with the manifest's summary."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    lines = ["# Results", "",
             "Generated by `make reproduce` (`python -m pan_utils.study.reproduce`); do not edit.", ""]
    if manifest:
        git = manifest.get("git", {})
        commit = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
        lines += [f"- profile: `{', '.join(manifest.get('profiles', [manifest.get('profile')]))}`",
                  f"- commit: `{commit}`", f"- updated: {manifest.get('updated')}",
                  "- environment and parameters: [manifest.json](manifest.json)", ""]
    sections = [("Notebooks (executed)", "notebooks", "*.ipynb"), ("Tables", "tables", "*.csv"),
                ("Figures", "figures", "*.png")]
    entries = manifest.get("notebooks", {})
    for title, sub, pattern in sections:
        files = sorted(p for p in (out_dir / sub).glob(pattern)
                       if not p.name.startswith(".") and not p.name.endswith(".failed.ipynb"))
        lines += [f"## {title}", ""]
        if not files:
            lines += ["(none)", ""]
            continue
        for p in files:
            extra = ""
            if sub == "notebooks" and p.stem in entries:
                e = entries[p.stem]
                extra = f" — profile `{e.get('profile')}`, {e.get('wall_time_s')} s"
            lines.append(f"- [{p.name}]({sub}/{p.name}){extra}")
        lines.append("")
    text = "\n".join(lines)
    return atomic_write(out_dir / "README.md", lambda tmp: Path(tmp).write_text(text))


def default_notebooks(root: str | Path = REPO_ROOT) -> list[Path]:
    """The study's notebooks, in order: ``notebooks/NN_*.ipynb``."""
    return sorted(Path(root, "notebooks").glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pan_utils.study.reproduce",
        description="Execute the study's notebooks with papermill into OUT "
                    "(notebooks/, tables/, figures/, manifest.json, README.md).")
    parser.add_argument("notebooks", nargs="*", help="notebooks to run, in order "
                        "(default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--profile", default="default", help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--data-dir", default=None,
                        help="image folder (ImageNet validation layout); required by 'paper'")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT,
                        help="seconds allowed per cell (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.profile not in PROFILES:
        return fail(f"unknown profile {args.profile!r}; choose one of {', '.join(PROFILES)}")
    data_dir = args.data_dir or None
    if args.profile == "paper" and not data_dir:
        return fail("the paper profile needs an ImageNet validation folder: "
                    "make reproduce PROFILE=paper DATA_DIR=/path/to/imagenet/val")
    if data_dir and not Path(data_dir).is_dir():
        return fail(f"data dir {data_dir} is not a folder")
    notebooks = [Path(n) for n in args.notebooks] or default_notebooks()
    missing = [str(n) for n in notebooks if not n.is_file()]
    if missing:
        return fail(f"no such notebook: {', '.join(missing)}")
    out = Path(args.out)
    if not notebooks:
        print("no notebooks to run (notebooks/NN_*.ipynb)", file=sys.stderr)
        write_index(out) if out.exists() else None
        return 0
    for nb in notebooks:
        print(f"[{args.profile}] {nb} -> {out / 'notebooks' / nb.name}", file=sys.stderr)
        try:
            entry = run_notebook(nb, out, args.profile, data_dir=data_dir, timeout=args.timeout,
                                 progress=not args.no_progress)
        except NotebookError as exc:
            write_index(out)
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"[{args.profile}] {nb.name} done in {entry['wall_time_s']:.1f} s", file=sys.stderr)
    write_index(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
