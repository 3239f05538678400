"""The papermill runner behind ``make reproduce``: executes the notebooks, writes them
atomically, and keeps ``manifest.json`` and the results index."""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import hashlib
import json
import os
import platform
import shutil
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


GENERATOR = "pan_utils.study.reproduce"  # manifest.json marker: the folder is ours
# A failed notebook's partial copy goes here, never beside the results it would mix with.
FAILED_DIR = REPO_ROOT / ".cache" / "failed"
# Folders of the repository that hold sources: never an output folder.
SOURCE_DIRS = ("notebooks", "pan_utils", "tests", "docs", "benchmarks", ".git", ".ci")
# What a run leaves while it works (removed at the next run and by `make clean`).
SCRATCH_PREFIXES = (".staging-", ".tmp-")
# Where the kernel and Jupyter would otherwise write under the home folder.
CACHE_ENV = {"TORCH_HOME": "torch", "MPLCONFIGDIR": "matplotlib", "IPYTHONDIR": "ipython",
             "JUPYTER_RUNTIME_DIR": "jupyter-runtime"}
_HELD_LOCKS: set[Path] = set()


class NotebookError(RuntimeError):
    """A notebook failed to execute; ``failed_path`` holds the partially executed copy."""

    def __init__(self, message: str, failed_path: Path | None = None):
        super().__init__(message)
        self.failed_path = failed_path


class OutDirError(RuntimeError):
    """An output folder the runner must not or cannot write: one line, exit status 2."""


# --------------------------------------------------------------------------------------
# The output folder: guarded, locked, written only through a staging folder.
# --------------------------------------------------------------------------------------


def is_runner_folder(out: str | Path) -> bool:
    """Whether ``out`` holds a manifest written by this runner (the marker, or the legacy
    shape with a ``notebooks`` mapping, as in the committed results/)."""
    manifest = read_manifest(out)
    return manifest.get("generator") == GENERATOR or isinstance(manifest.get("notebooks"), dict)


def _visible_entries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if not p.name.startswith(SCRATCH_PREFIXES)]


def check_out_dir(out: str | Path) -> Path:
    """Refuse a folder a run could damage: the repository root or a folder above it, a
    source folder, a file, a read-only folder, or a non-empty folder this runner did not
    write (one that has no manifest.json of ours). Returns the resolved path."""
    path = Path(out).resolve()
    if path == REPO_ROOT or path in REPO_ROOT.parents:
        raise OutDirError(f"--out {out}: is the repository root or above it; "
                          "use a results folder such as results/")
    for name in SOURCE_DIRS:
        src = REPO_ROOT / name
        if path == src or src in path.parents:
            raise OutDirError(f"--out {out}: is inside the repository's {name}/ (sources); "
                              "use a results folder such as results/")
    if path.exists() and not path.is_dir():
        raise OutDirError(f"--out {out}: exists and is not a folder")
    if path.is_dir() and _visible_entries(path) and not is_runner_folder(path):
        raise OutDirError(f"--out {out}: not empty and has no manifest.json of this runner; "
                          "use an empty or new folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutDirError(f"--out {out}: read-only (cannot write in {existing})")
    return path


@contextlib.contextmanager
def results_lock(out: Path):
    """Hold an exclusive lock on the folder ``out`` itself (flock on its descriptor, so no
    lock file is left in the results); a second run refuses instead of interleaving."""
    key = out.resolve()
    if key in _HELD_LOCKS:  # re-entered by this process (main -> run_notebook)
        yield
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out, os.O_RDONLY)
    except OSError as exc:
        raise OutDirError(f"--out {out}: cannot create or open it ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutDirError(f"--out {out}: another run is writing to it; "
                              "wait for it to finish") from None
        _HELD_LOCKS.add(key)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(key)
    finally:
        os.close(fd)


def clean_scratch(out: Path) -> list[Path]:
    """Remove what a killed run left: ``.staging-*`` and ``.tmp-*`` in ``out`` and in its
    sub-folders. Call only under :func:`results_lock` (no other run is using them)."""
    removed = []
    for folder in [out, *(p for p in out.iterdir() if p.is_dir() and not p.is_symlink()
                          and not p.name.startswith("."))] if out.is_dir() else []:
        for p in folder.iterdir():
            if p.name.startswith(SCRATCH_PREFIXES):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _files(root: Path) -> list[str]:
    """Files under ``root``, relative, skipping hidden names (scratch, backups)."""
    out = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        out += [os.path.relpath(os.path.join(d, n), root) for n in names if not n.startswith(".")]
    return sorted(out)


def _stage(out: Path) -> Path:
    """A private folder beside the results (same filesystem: renames are atomic), seeded
    with a copy of the current tables and claims so a notebook can read earlier chapters."""
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "notebooks").mkdir(parents=True)
    if (out / "tables").is_dir():
        shutil.copytree(out / "tables", staging / "tables",
                        ignore=shutil.ignore_patterns(".*"))
    if (out / "claims.json").is_file():
        shutil.copy2(out / "claims.json", staging / "claims.json")
    return staging


def _commit(staging: Path, out: Path) -> list[str]:
    """Move every new or changed file of ``staging`` into ``out`` (manifest.json last).

    Each move is a rename; a file it replaces is first hard-linked into
    ``staging/.backup``, so when a move fails (disk full, Ctrl-C) the moves already done
    are undone and ``out`` is left as it was. Returns the moved paths."""
    moves = [rel for rel in _files(staging)
             if not (out / rel).is_file() or not filecmp.cmp(staging / rel, out / rel,
                                                             shallow=False)]
    moves.sort(key=lambda rel: rel == "manifest.json")
    backup, done, made = staging / ".backup", [], []
    try:
        for rel in moves:
            dst = out / rel
            for parent in reversed([p for p in dst.parents if out in p.parents]):
                if not parent.exists():
                    parent.mkdir()
                    made.append(parent)
            if dst.exists():
                (backup / rel).parent.mkdir(parents=True, exist_ok=True)
                os.link(dst, backup / rel)
            os.replace(staging / rel, dst)
            done.append(rel)
    except BaseException:
        for rel in reversed(done):
            if (backup / rel).exists():
                os.rename(backup / rel, out / rel)
            else:
                (out / rel).unlink(missing_ok=True)
        for parent in reversed(made):
            with contextlib.suppress(OSError):
                parent.rmdir()
        raise
    return moves


def _keep_failed(executed: Path, failed_dir: Path, src: Path, final: Path, cwd: Path,
                 rewrite: dict[str, str]) -> Path | None:
    """Copy a partial executed notebook to ``failed_dir/<name>.failed.ipynb`` (best effort:
    a full disk must not hide the notebook's own error)."""
    if not executed.is_file() or not executed.stat().st_size:
        return None
    failed = failed_dir / f"{src.stem}.failed.ipynb"
    try:
        with contextlib.suppress(Exception):
            _sanitise_metadata(executed, src, final, cwd, rewrite)
        failed_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(executed, failed)
        readable(failed)
    except OSError:
        return None
    return failed


def _recorded_timings(staging: Path) -> dict[str, Any]:
    """``{"timings": ...}`` from what the notebook recorded (results.record_timings), or {}."""
    path = staging / ".timings.json"
    try:
        return {"timings": json.loads(path.read_text())} if path.is_file() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def source_hash(src: str | Path) -> str:
    """sha256 of a notebook's source file: part of what makes a run up to date."""
    return hashlib.sha256(Path(src).read_bytes()).hexdigest()


def code_hash(root: Path = REPO_ROOT) -> str:
    """sha256 over the package's Python sources (pan_utils/**/*.py), in path order."""
    h = hashlib.sha256()
    for p in sorted((root / "pan_utils").rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


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


def cache_env(environ: dict[str, str] | os._Environ = os.environ) -> dict[str, str]:
    """Cache folders under the repository's .cache/ for every variable of CACHE_ENV not
    already set, so neither the runner nor the kernel writes under the home folder."""
    return {k: str(REPO_ROOT / ".cache" / sub) for k, sub in CACHE_ENV.items()
            if not environ.get(k)}


@contextlib.contextmanager
def _project_kernel():
    """Make kernel ``python3`` mean *this* interpreter, whatever else is installed.

    A kernelspec pointing at ``sys.executable`` goes first on JUPYTER_PATH (highest
    priority), so neither a user-level ``python3`` spec nor a moved .venv can redirect
    the run to another Python. Unset cache variables (CACHE_ENV) point under .cache/
    for the runner (connection files) and the kernel alike.
    """
    cache = cache_env()
    with tempfile.TemporaryDirectory(prefix="pan-kernel-") as tmp:
        spec_dir = Path(tmp) / "kernels" / KERNEL_NAME
        spec_dir.mkdir(parents=True)
        spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (pan_utils)", "language": "python",
                "metadata": {"debugger": True},
                # papermill shows progress per cell; bars stored in a notebook are noise
                "env": {"PAN_UTILS_PROGRESS": "0", "PAN_UTILS_NONINTERACTIVE": "1", **cache}}
        (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))
        changed = {"JUPYTER_PATH": os.pathsep.join(
            [tmp] + ([os.environ["JUPYTER_PATH"]] if os.environ.get("JUPYTER_PATH") else [])),
            **cache}
        old = {k: os.environ.get(k) for k in changed}
        for path in cache.values():
            Path(path).mkdir(parents=True, exist_ok=True)
        os.environ.update(changed)
        try:
            yield KERNEL_NAME
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _sanitise_metadata(path: Path, src: Path, final: Path, cwd: Path,
                       rewrite: dict[str, str] | None = None) -> None:
    """Replace the temporary/absolute paths papermill records with portable ones, and each
    key of ``rewrite`` (the staging folder's paths) by its value (the results folder's)."""
    import nbformat

    text = Path(path).read_text()
    for old, new in (rewrite or {}).items():
        text = text.replace(json.dumps(old)[1:-1], json.dumps(new)[1:-1])
    nb = nbformat.reads(text, as_version=4)
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
                 update_manifest: bool = True, failed_dir: str | Path | None = None
                 ) -> dict[str, Any]:
    """Execute ``src`` into ``out_dir/notebooks/<name>.ipynb`` with the given profile.

    The notebook runs in its own folder (relative paths in it work), on this interpreter's
    kernel, with ``timeout`` seconds per cell. Its ``out_dir`` is a private staging folder
    inside ``out_dir`` (seeded with the current tables, so it reads earlier chapters);
    the executed copy, tables, figures, claims and the manifest entry are moved into
    ``out_dir`` only when every cell succeeded. On failure, Ctrl-C or a full disk
    ``out_dir`` is left byte for byte as it was, the partial copy is kept as
    ``failed_dir/<name>.failed.ipynb`` (default .cache/failed/) and
    :class:`NotebookError` (or the KeyboardInterrupt) is raised. A folder the runner must
    not write raises :class:`OutDirError`. Returns the manifest entry of the run.
    """
    src = Path(src).resolve()
    if not src.is_file():
        raise FileNotFoundError(f"no notebook {src}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    out = Path(out_dir)
    check_out_dir(out)
    params = _parameters(src, out, profile, data_dir, extra_params)
    failed_dir = Path(failed_dir) if failed_dir is not None else FAILED_DIR
    with results_lock(out):
        clean_scratch(out)
        try:
            staging = _stage(out)
        except OSError as exc:
            shutil.rmtree(out / f".staging-{os.getpid()}", ignore_errors=True)
            raise OutDirError(f"--out {out}: cannot stage a run there ({exc.strerror})") from None
        try:
            return _run_staged(src, out, staging, profile, params, timeout, progress,
                               update_manifest, failed_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _parameters(src: Path, out: Path, profile: str, data_dir: str | Path | None,
                extra_params: dict[str, Any] | None) -> dict[str, Any]:
    """The parameters the notebook declares, as recorded (``out_dir``: the results folder)."""
    declared = notebook_parameters(src)
    params: dict[str, Any] = {"profile": profile, "out_dir": _portable(out, src.parent)}
    if data_dir is not None:
        params["data_dir"] = str(Path(data_dir).resolve())
    params.update(extra_params or {})
    unknown = sorted(set(extra_params or {}) - set(declared))
    if unknown:
        raise ValueError(f"{src.name} has no parameter(s) {', '.join(unknown)}")
    # data_dir goes only to notebooks that take one; profile/out_dir are required (tests)
    return {k: v for k, v in params.items() if k in declared}


def _run_staged(src: Path, out: Path, staging: Path, profile: str, params: dict[str, Any],
                timeout: int | None, progress: bool, update_manifest: bool,
                failed_dir: Path) -> dict[str, Any]:
    """Execute into ``staging``, then commit it to ``out`` (see :func:`run_notebook`)."""
    import papermill

    cwd = src.parent
    final = out / "notebooks" / src.name
    executed = staging / "notebooks" / src.name
    rewrite = {str(staging.resolve()): str(out.resolve()),
               _portable(staging, cwd): _portable(out, cwd)}
    run_params = {**params, "out_dir": _portable(staging, cwd)} if "out_dir" in params else params
    start = time.perf_counter()
    try:
        with _project_kernel() as kernel:
            papermill.execute_notebook(
                str(src), str(executed), parameters=run_params, kernel_name=kernel,
                progress_bar=progress, cwd=str(cwd), execution_timeout=timeout,
                request_save_on_cell_execute=True)
    except BaseException as exc:
        failed = _keep_failed(executed, failed_dir, src, final, cwd, rewrite)
        if isinstance(exc, KeyboardInterrupt):
            raise
        where = f"; partial run kept in {failed}" if failed else ""
        raise NotebookError(f"{src.name} failed: {_first_line(exc)}; {out} unchanged{where}",
                            failed) from exc
    wall = time.perf_counter() - start
    entry = {
        "source": _portable(src, REPO_ROOT) if _inside_repo(src) else src.name,
        "source_sha256": source_hash(src),
        "code_sha256": code_hash(),
        "executed": f"notebooks/{final.name}",
        "profile": profile,
        "parameters": params,
        "settings": _jsonable(_resolved_settings(profile, params)),
        "wall_time_s": round(wall, 2),
        **_recorded_timings(staging),
        "finished": _now(),
        "git": git_state(),
    }
    try:
        _sanitise_metadata(executed, src, final, cwd, rewrite)
        readable(executed)
        if update_manifest:
            manifest = merged_manifest(out, {src.stem: entry}, profile)
            _write_json(staging / "manifest.json", manifest)
        _commit(staging, out)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise NotebookError(f"{src.name} ran but its results could not be written to {out} "
                            f"({reason}); {out} unchanged") from exc
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


def merged_manifest(out_dir: str | Path, entries: dict[str, dict[str, Any]],
                    profile: str) -> dict[str, Any]:
    """``out_dir/manifest.json`` with ``entries`` merged in (others keep their entry)."""
    manifest = read_manifest(out_dir)
    notebooks = {**manifest.get("notebooks", {}), **entries}
    return {
        "generator": GENERATOR,
        "profile": profile,
        "profiles": sorted({e.get("profile", profile) for e in notebooks.values()}),
        "updated": _now(),
        "git": git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "notebooks": dict(sorted(notebooks.items())),
    }


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def update_manifest_file(out_dir: str | Path, entries: dict[str, dict[str, Any]],
                         profile: str) -> Path:
    """Merge ``entries`` into ``out_dir/manifest.json`` (others keep their previous entry)."""
    return _write_json(Path(out_dir) / "manifest.json", merged_manifest(out_dir, entries, profile))


def write_index(out_dir: str | Path) -> Path:
    """``out_dir/README.md``: what the run produced, linked, with the manifest's summary."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    if (out_dir / "README.md").exists() and not is_runner_folder(out_dir):
        raise OutDirError(f"{out_dir / 'README.md'}: not written by this runner (no manifest.json "
                          "of ours); left as it is")
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
    parser.add_argument("--if-changed", action="store_true",
                        help="skip notebooks whose manifest entry has the same profile, "
                             "parameters, notebook source and package code (make reproduce)")
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
    try:
        check_out_dir(out)
        with results_lock(out):
            return _run_all(notebooks, out, args, data_dir)
    except OutDirError as exc:
        return fail(str(exc))
    except KeyboardInterrupt:
        print(f"interrupted; {out}/ unchanged by the notebook that was running", file=sys.stderr)
        return 130
    except OSError as exc:  # the index, after the notebooks' results were moved in
        print(f"error: cannot write in {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1


def _run_all(notebooks: list[Path], out: Path, args, data_dir: str | None) -> int:
    """Run ``notebooks`` in order into ``out`` (locked by the caller); with
    ``--if-changed`` skip each one whose manifest entry is up to date, until one runs
    (later chapters may read its tables)."""
    clean_scratch(out)
    if not notebooks:
        print("no notebooks to run (notebooks/NN_*.ipynb)", file=sys.stderr)
        write_index(out)
        return 0
    done = 0
    for nb in notebooks:
        if args.if_changed and not done and up_to_date(nb, out, args.profile, data_dir):
            print(f"[{args.profile}] {nb.name} up to date", file=sys.stderr)
            continue
        print(f"[{args.profile}] {nb} -> {out / 'notebooks' / nb.name}", file=sys.stderr)
        try:
            entry = run_notebook(nb, out, args.profile, data_dir=data_dir, timeout=args.timeout,
                                 progress=not args.no_progress)
        except NotebookError as exc:
            if done:  # the index lists what the notebooks before this one wrote
                write_index(out)
            print(f"error: {exc}", file=sys.stderr)
            return 1
        done += 1
        print(f"[{args.profile}] {nb.name} done in {entry['wall_time_s']:.1f} s", file=sys.stderr)
    if done or not (out / "README.md").exists():
        write_index(out)
    return 0


def up_to_date(src: Path, out: Path, profile: str, data_dir: str | None) -> bool:
    """Whether ``out``'s manifest has an entry for ``src`` run with the same profile and
    parameters, from the same notebook source and package code, under the same package
    versions, and its executed copy."""
    manifest = read_manifest(out)
    entry = manifest.get("notebooks", {}).get(Path(src).stem)
    if manifest.get("packages") != package_versions():
        return False
    if not entry or not (out / entry.get("executed", "-")).is_file():
        return False
    try:
        params = _parameters(Path(src).resolve(), out, profile, data_dir, None)
    except ValueError:
        return False
    return (entry.get("profile") == profile and entry.get("parameters") == params
            and entry.get("source_sha256") == source_hash(src)
            and entry.get("code_sha256") == code_hash())


if __name__ == "__main__":
    sys.exit(main())
