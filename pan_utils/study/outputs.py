"""The output folder as a transaction: guarded, locked, written only through a staging
folder whose files are moved in when a notebook has succeeded (and moved back out when a
move fails), plus the folder's index (README.md)."""

from __future__ import annotations

import contextlib
import fcntl
import filecmp
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..engine.io import atomic_write
from .provenance import GENERATOR, REPO_ROOT, ManifestError, read_manifest

# Folders of the repository that hold sources: never an output folder.
SOURCE_DIRS = ("notebooks", "pan_utils", "tests", "docs", "benchmarks", ".git", ".ci")
# What a run leaves while it works (removed at the next run and by `make clean`).
SCRATCH_PREFIXES = (".staging-", ".tmp-")
_HELD_LOCKS: set[Path] = set()


class OutDirError(RuntimeError):
    """An output folder the runner must not or cannot write: one line, exit status 2."""


def is_runner_folder(out: str | Path) -> bool:
    """Whether ``out`` holds a manifest written by this runner (the marker, or the legacy
    shape with a ``notebooks`` mapping, as in the committed results/). A manifest.json
    that is corrupt raises :class:`OutDirError`: the folder may be ours, so it is left
    alone rather than taken for a stranger's."""
    try:
        manifest = read_manifest(out)
    except ManifestError as exc:
        raise OutDirError(f"{exc}; left as it is: repair or remove it, or choose another "
                          "folder") from None
    return manifest.get("generator") == GENERATOR or isinstance(manifest.get("notebooks"), dict)


def _visible_entries(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if not p.name.startswith(SCRATCH_PREFIXES)]


def check_out_dir(out: str | Path) -> Path:
    """Refuse a folder a run could damage: the repository root or a folder above it, a
    source folder, a file, a read-only folder, a folder with a corrupt manifest.json, or
    a non-empty folder this runner did not write (one that has no manifest.json of ours).
    Returns the resolved path."""
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


def files(root: Path) -> list[str]:
    """Files under ``root``, relative, skipping hidden names (scratch, backups)."""
    out = []
    for d, dirs, names in os.walk(root):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        out += [os.path.relpath(os.path.join(d, n), root) for n in names if not n.startswith(".")]
    return sorted(out)


def _stat_key(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def stage(out: Path) -> tuple[Path, dict[str, tuple[int, int, int]]]:
    """A private folder beside the results (same filesystem: renames are atomic), seeded
    with a copy of the current tables and claims so a notebook can read earlier chapters.
    Returns it and the identity of each seeded file (see :func:`written_files`)."""
    staging = out / f".staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "notebooks").mkdir(parents=True)
    if (out / "tables").is_dir():
        shutil.copytree(out / "tables", staging / "tables",
                        ignore=shutil.ignore_patterns(".*"))
    if (out / "claims.json").is_file():
        shutil.copy2(out / "claims.json", staging / "claims.json")
    return staging, {rel: _stat_key(staging / rel) for rel in files(staging)}


def written_files(staging: Path, seeded: dict[str, tuple[int, int, int]]) -> list[str]:
    """The files of ``staging`` the notebook wrote: new ones, and seeded ones replaced or
    rewritten (another inode, time or size), even when their bytes did not change."""
    return [rel for rel in files(staging)
            if rel != "manifest.json" and seeded.get(rel) != _stat_key(staging / rel)]


def commit(staging: Path, out: Path) -> list[str]:
    """Move every new or changed file of ``staging`` into ``out`` (manifest.json last).

    Each move is a rename; a file it replaces is first hard-linked into
    ``staging/.backup``, so when a move fails (disk full, Ctrl-C) the moves already done
    are undone and ``out`` is left as it was. Returns the moved paths."""
    moves = [rel for rel in files(staging)
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


def remove_if_empty(out: Path) -> bool:
    """Remove ``out`` when a refused or failed run created it and left nothing in it."""
    try:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
            return True
    except OSError:
        pass
    return False


def write_json(path: Path, data: dict[str, Any]) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def write_index(out_dir: str | Path) -> Path:
    """``out_dir/README.md``: what the run produced, linked, with the manifest's summary."""
    out_dir = Path(out_dir)
    if (out_dir / "README.md").exists() and not is_runner_folder(out_dir):
        raise OutDirError(f"{out_dir / 'README.md'}: not written by this runner (no manifest.json "
                          "of ours); left as it is")
    try:
        manifest = read_manifest(out_dir)
    except ManifestError as exc:
        raise OutDirError(str(exc)) from None
    lines = ["# Results", "",
             "Generated by `make reproduce` (`python -m pan_utils.study.reproduce`); do not edit.", ""]
    if manifest:
        git = manifest.get("git", {})
        commit_id = (git.get("commit") or "unknown")[:12] + (" (dirty)" if git.get("dirty") else "")
        lines += [f"- profile: `{', '.join(manifest.get('profiles', [manifest.get('profile')]))}`",
                  f"- commit: `{commit_id}`", f"- updated: {manifest.get('updated')}",
                  "- environment and parameters: [manifest.json](manifest.json)", ""]
    sections = [("Notebooks (executed)", "notebooks", "*.ipynb"), ("Tables", "tables", "*.csv"),
                ("Figures", "figures", "*.png")]
    entries = manifest.get("notebooks", {})
    for title, sub, pattern in sections:
        found = sorted(p for p in (out_dir / sub).glob(pattern)
                       if not p.name.startswith(".") and not p.name.endswith(".failed.ipynb"))
        lines += [f"## {title}", ""]
        if not found:
            lines += ["(none)", ""]
            continue
        for p in found:
            extra = ""
            if sub == "notebooks" and p.stem in entries:
                e = entries[p.stem]
                extra = f" — profile `{e.get('profile')}`, {e.get('wall_time_s')} s"
            lines.append(f"- [{p.name}]({sub}/{p.name}){extra}")
        lines.append("")
    text = "\n".join(lines)
    return atomic_write(out_dir / "README.md", lambda tmp: Path(tmp).write_text(text))
