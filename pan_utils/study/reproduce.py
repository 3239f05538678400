"""The papermill runner behind ``make reproduce``: executes the notebooks, each into a
staging folder moved into the results only when it succeeded (``outputs``), records what
each result depends on in ``manifest.json`` (``provenance``), and says why it reruns a
notebook or why a folder's results no longer match the code (``--check``).

Run it as ``python -m pan_utils.study.reproduce --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ..engine.io import readable
from . import preflight
from .outputs import (SCRATCH_PREFIXES, SOURCE_DIRS, OutDirError, check_out_dir,  # noqa: F401
                      clean_scratch, commit, files, is_runner_folder, remove_if_empty,
                      results_lock, stage, write_index, write_json, written_files)
from .provenance import (GENERATOR, PACKAGES, REPO_ROOT, ManifestError,  # noqa: F401
                         claims_hashes, code_hash, combined_hash, current_state, file_sha256,
                         git_state, machine, merged_manifest, module_hashes, now,
                         package_versions, read_manifest, source_hash, stale_reasons,
                         summarize)
from .settings import PROFILES, Settings, settings

KERNEL_NAME = "python3"
DEFAULT_TIMEOUT = 3600  # seconds per cell: a hung cell fails the run instead of blocking it
# A failed notebook's partial copy goes here, never beside the results it would mix with.
FAILED_DIR = REPO_ROOT / ".cache" / "failed"
# Where the kernel and Jupyter would otherwise write under the home folder.
CACHE_ENV = {"TORCH_HOME": "torch", "MPLCONFIGDIR": "matplotlib", "IPYTHONDIR": "ipython",
             "JUPYTER_RUNTIME_DIR": "jupyter-runtime"}


class NotebookError(RuntimeError):
    """A notebook failed to execute; ``failed_path`` holds the partially executed copy."""

    def __init__(self, message: str, failed_path: Path | None = None):
        super().__init__(message)
        self.failed_path = failed_path


class InputError(ValueError):
    """A bad argument of the runner (a file that is not a notebook, a bad timeout): one
    line, exit status 2, nothing created."""


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


def _claims(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


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


def check_notebook(path: str | Path) -> Path:
    """``path`` if it is a readable notebook with a code cell, else :class:`InputError`
    saying what it is instead (checked before an output folder is created)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such notebook: {path}")
    if path.suffix != ".ipynb":
        raise InputError(f"{path}: not a notebook (expected a .ipynb file)")
    if not path.stat().st_size:
        raise InputError(f"{path}: an empty file, not a notebook")
    import nbformat

    try:
        nb = nbformat.read(str(path), as_version=4)
    except Exception as exc:  # noqa: BLE001 - invalid JSON, not nbformat, unreadable
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable notebook ({detail})") from None
    if not any(c.get("cell_type") == "code" for c in nb.cells):
        raise InputError(f"{path}: a notebook without code cells; nothing to run")
    return path


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
    if timeout is not None and timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout}")
    out = Path(out_dir)
    check_out_dir(out)
    params = _parameters(src, out, profile, data_dir, extra_params)
    failed_dir = Path(failed_dir) if failed_dir is not None else FAILED_DIR
    with results_lock(out):
        clean_scratch(out)
        try:
            staging, seeded = stage(out)
        except OSError as exc:
            shutil.rmtree(out / f".staging-{os.getpid()}", ignore_errors=True)
            raise OutDirError(f"--out {out}: cannot stage a run there ({exc.strerror})") from None
        try:
            return _run_staged(src, out, staging, seeded, profile, params, timeout, progress,
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


def _run_staged(src: Path, out: Path, staging: Path, seeded: dict, profile: str,
                params: dict[str, Any], timeout: int | None, progress: bool,
                update_manifest: bool, failed_dir: Path) -> dict[str, Any]:
    """Execute into ``staging``, then commit it to ``out`` (see :func:`run_notebook`)."""
    import papermill

    cwd = src.parent
    final = out / "notebooks" / src.name
    executed = staging / "notebooks" / src.name
    rewrite = {str(staging.resolve()): str(out.resolve()),
               _portable(staging, cwd): _portable(out, cwd)}
    run_params = {**params, "out_dir": _portable(staging, cwd)} if "out_dir" in params else params
    state = current_state(src, profile, params)  # the code as it is when the run starts
    claims_before = _claims(staging / "claims.json")
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
    try:
        _sanitise_metadata(executed, src, final, cwd, rewrite)
        readable(executed)
        entry = {
            "source": _portable(src, REPO_ROOT) if _inside_repo(src) else src.name,
            **state,
            "executed": f"notebooks/{final.name}",
            "outputs": _output_hashes(staging, seeded),
            "claims": _written_claims(staging, claims_before, read_manifest(out).get(
                "notebooks", {}).get(src.stem, {})),
            "settings": _jsonable(_resolved_settings(profile, params)),
            "wall_time_s": round(wall, 2),
            **_recorded_timings(staging),
            "finished": now(),
            "git": git_state(),
        }
        if update_manifest:
            manifest = merged_manifest(out, {src.stem: entry}, profile)
            write_json(staging / "manifest.json", manifest)
        commit(staging, out)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise NotebookError(f"{src.name} ran but its results could not be written to {out} "
                            f"({reason}); {out} unchanged") from exc
    return entry


def _output_hashes(staging: Path, seeded: dict) -> dict[str, str]:
    """sha256 of every file the notebook wrote (claims.json apart: each chapter owns only
    its section of it, see :func:`_written_claims`)."""
    return {rel: file_sha256(staging / rel) for rel in written_files(staging, seeded)
            if rel != "claims.json"}


def _written_claims(staging: Path, before: dict[str, Any], old_entry: dict[str, Any]
                    ) -> dict[str, str]:
    """Hashes of the claims.json sections this run wrote: those that changed, and those
    its previous run wrote (a rerun that records the same claims changes nothing)."""
    after = _claims(staging / "claims.json")
    mine = {c for c in after if after[c] != before.get(c)} | set(old_entry.get("claims", {}))
    return claims_hashes(after, sorted(mine))


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


def update_manifest_file(out_dir: str | Path, entries: dict[str, dict[str, Any]],
                         profile: str) -> Path:
    """Merge ``entries`` into ``out_dir/manifest.json`` (others keep their previous entry)."""
    return write_json(Path(out_dir) / "manifest.json", merged_manifest(out_dir, entries, profile))


def default_notebooks(root: str | Path = REPO_ROOT) -> list[Path]:
    """The study's notebooks, in order: ``notebooks/NN_*.ipynb``."""
    return sorted(Path(root, "notebooks").glob("[0-9][0-9]_*.ipynb"))


# ------------------------------------------------------------------------ up to date


def why_stale(src: Path, out: Path, profile: str, data_dir: str | None,
              manifest: dict[str, Any] | None = None) -> list[str]:
    """Why ``out``'s results of ``src`` do not match the code, the packages, the profile
    and parameters and the outputs on disk as they are now; [] when up to date."""
    manifest = read_manifest(out) if manifest is None else manifest
    entry = manifest.get("notebooks", {}).get(Path(src).stem)
    try:
        params = _parameters(Path(src).resolve(), out, profile, data_dir, None)
    except ValueError as exc:
        return [str(exc)]
    return stale_reasons(entry, current_state(src, profile, params), out,
                         manifest.get("packages"))


def up_to_date(src: Path, out: Path, profile: str, data_dir: str | None) -> bool:
    """Whether ``out``'s manifest has an entry for ``src`` that matches the tree now: same
    profile and parameters, notebook source, imported modules and package versions, and
    every output it recorded present with its recorded hash."""
    return not why_stale(src, out, profile, data_dir)


def check(notebooks: list[Path], out: Path, profile: str, data_dir: str | None) -> int:
    """``--check``: one line per stale notebook saying why and exit status 1, or one line
    saying all are up to date and 0."""
    manifest = read_manifest(out)
    if not manifest:
        print(f"{out}: no manifest.json, so no results to check (make reproduce writes them)")
        return 1
    stale = 0
    for nb in notebooks:
        reasons = why_stale(nb, out, profile, data_dir, manifest)
        if reasons:
            stale += 1
            print(f"{nb.name}: stale: {summarize(reasons)}")
    if stale:
        print(f"{out}: {stale} of {len(notebooks)} notebook(s) stale; "
              "`make reproduce` reruns them", file=sys.stderr)
        return 1
    print(f"{out}: all {len(notebooks)} notebook(s) up to date (profile {profile})")
    return 0


# ------------------------------------------------------------------------ the CLI


class _Parser(argparse.ArgumentParser):
    """argparse with one error line (no usage block) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message}\n")


def _positive_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive number of seconds, not {value} (no cell may run forever)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(
        prog="python -m pan_utils.study.reproduce",
        description="Execute the study's notebooks with papermill into OUT "
                    "(notebooks/, tables/, figures/, manifest.json, README.md), or --check "
                    "whether OUT's results match the code.")
    parser.add_argument("notebooks", nargs="*", help="notebooks to run, in order "
                        "(default: every notebooks/NN_*.ipynb)")
    parser.add_argument("--profile", default="default", help=f"one of {', '.join(PROFILES)}")
    parser.add_argument("--out", default="results", help="output folder (default: results)")
    parser.add_argument("--data-dir", default=None,
                        help="image folder (ImageNet validation layout); required by 'paper'")
    parser.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_TIMEOUT,
                        help="seconds allowed per cell, > 0 (default %(default)s)")
    parser.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    parser.add_argument("--if-changed", action="store_true",
                        help="rerun only stale notebooks (and every later one), saying why; "
                             "skip those whose manifest entry matches the tree (make reproduce)")
    parser.add_argument("--check", action="store_true",
                        help="run nothing: print one line per stale notebook saying why and "
                             "exit 1, or one line and exit 0 when all are up to date")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or one error line already printed
        return int(exc.code or 0)

    def fail(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        return 2

    if args.profile not in PROFILES:
        return fail(f"unknown profile {args.profile!r}; choose one of {', '.join(PROFILES)}")
    data_dir = args.data_dir or None
    if args.profile == "paper" and not data_dir and not args.check:
        return fail("the paper profile needs an ImageNet validation folder: "
                    "make reproduce PROFILE=paper DATA_DIR=/path/to/imagenet/val")
    if data_dir and not Path(data_dir).is_dir():
        return fail(f"data dir {data_dir} is not a folder")
    notebooks = [Path(n) for n in args.notebooks] or default_notebooks()
    try:
        for nb in notebooks:
            check_notebook(nb)
    except InputError as exc:
        return fail(str(exc))
    out = Path(args.out)
    if args.check:
        try:
            return check(notebooks, out, args.profile, data_dir)
        except ManifestError as exc:
            return fail(str(exc))
    problems = _preflight(args.profile, data_dir)
    if problems:
        return fail("; ".join(problems) if len(problems) == 1 else
                    f"{len(problems)} problems before any notebook runs: " + "; ".join(problems))
    created = not out.exists()
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
    finally:
        if created:
            remove_if_empty(out)


def _preflight(profile: str, data_dir: str | None) -> list[str]:
    """The paper profile's checks (weights, image counts) before anything runs; with a
    data dir, every profile checks the image counts."""
    if profile != "paper" and not data_dir:
        return []
    s = settings(profile, data_dir=data_dir)
    if profile != "paper":
        return preflight.image_problems(s)
    return preflight.preflight(s)


def _run_all(notebooks: list[Path], out: Path, args, data_dir: str | None) -> int:
    """Run ``notebooks`` in order into ``out`` (locked by the caller); with
    ``--if-changed`` skip each one whose manifest entry is up to date, until one runs
    (later chapters may read its tables), and say why each one reruns."""
    clean_scratch(out)
    if not notebooks:
        print("no notebooks to run (notebooks/NN_*.ipynb)", file=sys.stderr)
        write_index(out)
        return 0
    done: list[Path] = []
    for nb in notebooks:
        tag = f"[{args.profile}] {nb.name}"
        if args.if_changed:
            try:
                reasons = (why_stale(nb, out, args.profile, data_dir) if not done else
                           [f"after {done[0].stem}, which reran (this notebook may read "
                            "its tables)"])
            except ManifestError as exc:
                raise OutDirError(str(exc)) from None
            if not reasons:
                print(f"{tag} up to date", file=sys.stderr)
                continue
            print(f"{tag} reruns: {summarize(reasons)}", file=sys.stderr)
        print(f"{tag} -> {out / 'notebooks' / nb.name}", file=sys.stderr)
        try:
            entry = run_notebook(nb, out, args.profile, data_dir=data_dir, timeout=args.timeout,
                                 progress=not args.no_progress)
        except NotebookError as exc:
            if done:  # the index lists what the notebooks before this one wrote
                write_index(out)
            print(f"error: {exc}", file=sys.stderr)
            return 1
        done.append(nb)
        print(f"{tag} done in {entry['wall_time_s']:.1f} s", file=sys.stderr)
    if done or not (out / "README.md").exists():
        write_index(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
