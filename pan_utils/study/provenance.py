"""Provenance of a run: what a notebook's results depend on, recorded in ``manifest.json``,
and why an entry no longer matches the code.

A notebook's entry hashes its source, the ``pan_utils`` modules it imports (transitively,
from the import graph grimp builds), the versions of the pinned packages
(``requirements.txt``), and every output it wrote. ``stale_reasons`` compares an entry with
the tree as it is now and says, in words, what differs.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "pan_utils"
GENERATOR = "pan_utils.study.reproduce"  # manifest.json marker: the folder is ours
# The pinned stack: a version change in any of them can change a number.
REQUIREMENT_FILES = ("requirements.txt", "requirements-weights.txt")
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*==")
MAX_REASONS = 4  # a stale line names this many reasons, then counts the rest


class ManifestError(ValueError):
    """``manifest.json`` exists but is not a manifest (corrupt, or not a JSON object)."""


# ------------------------------------------------------------------------ packages


def requirement_names(root: Path = REPO_ROOT,
                      files: Iterable[str] = REQUIREMENT_FILES) -> tuple[str, ...]:
    """The names pinned (``name==version``) in the requirement files, in order: the
    packages whose versions an entry records."""
    names: list[str] = []
    for name in files:
        path = Path(root) / name
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            m = _PIN.match(line.split("#")[0])
            if m:
                names.append(m.group(1))
    return tuple(dict.fromkeys(names))


PACKAGES = requirement_names()


def package_versions(packages: Iterable[str] | None = None) -> dict[str, str | None]:
    """Installed versions of ``packages`` (default: ``PACKAGES``) and of Python; None for
    a package that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES if packages is None else packages:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------ the code


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def source_hash(src: str | Path) -> str:
    """sha256 of a notebook's source file: part of what makes a run up to date."""
    return file_sha256(src)


def code_hash(root: Path = REPO_ROOT) -> str:
    """sha256 over the whole package's Python sources (pan_utils/**/*.py), in path order:
    for caches that depend on all of it (the census cache)."""
    h = hashlib.sha256()
    for p in sorted((root / PACKAGE).rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def _cell_code(source: str) -> str:
    """A code cell as plain Python (IPython magics and shell escapes transformed away)."""
    try:
        from IPython.core.inputtransformer2 import TransformerManager

        return TransformerManager().transform_cell(source)
    except Exception:  # noqa: BLE001 - without IPython, drop magic lines
        return "\n".join(ln for ln in source.splitlines()
                         if not ln.lstrip().startswith(("%", "!")))


def imported_names(code: str) -> set[str]:
    """Modules named by the import statements of ``code``: ``import a.b`` gives a.b,
    ``from a import b`` gives a and a.b (b may be a submodule; unknown names are dropped
    against the import graph later)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def notebook_imports(src: str | Path) -> set[str]:
    """The ``pan_utils`` modules a notebook's code cells import directly."""
    nb = json.loads(Path(src).read_text())
    names: set[str] = set()
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code":
            source = cell.get("source", "")
            names |= imported_names(_cell_code("".join(source) if isinstance(source, list)
                                               else source))
    return {n for n in names if n == PACKAGE or n.startswith(PACKAGE + ".")}


@functools.lru_cache(maxsize=4)
def _graph(root: str):
    import grimp

    return grimp.build_graph(PACKAGE, cache_dir=None, exclude_type_checking_imports=True)


def module_closure(modules: Iterable[str], root: Path = REPO_ROOT) -> list[str]:
    """``modules`` and every ``pan_utils`` module they import, transitively, including the
    packages (``__init__``) Python executes on the way: what a notebook runs."""
    graph = _graph(str(root))
    known = graph.modules
    todo = [m for m in modules if m in known]
    seen: set[str] = set()
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages
        todo += sorted(graph.find_upstream_modules(m))
    return sorted(seen)


def module_file(module: str, root: Path = REPO_ROOT) -> Path:
    """The source file of a ``pan_utils`` module (a package's ``__init__.py``)."""
    base = Path(root, *module.split("."))
    return base / "__init__.py" if base.is_dir() else base.with_suffix(".py")


def module_hashes(src: str | Path, root: Path = REPO_ROOT) -> dict[str, str | None]:
    """sha256 of each module the notebook ``src`` runs (``module_closure`` of its
    imports); None for a module whose file is gone."""
    out: dict[str, str | None] = {}
    for m in module_closure(notebook_imports(src), root):
        path = module_file(m, root)
        out[m] = file_sha256(path) if path.is_file() else None
    return out


def combined_hash(hashes: dict[str, Any]) -> str:
    """One sha256 for a mapping of hashes (the entry's ``code_sha256``)."""
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def claims_hashes(claims: dict[str, Any], chapters: Iterable[str]) -> dict[str, str]:
    """sha256 of each chapter's section of claims.json (a file every notebook writes to)."""
    return {c: combined_hash({"claims": claims[c]}) for c in chapters if c in claims}


# ------------------------------------------------------------------------ the run


def now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


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


# ------------------------------------------------------------------------ the manifest


def read_manifest(out_dir: str | Path) -> dict[str, Any]:
    """``out_dir/manifest.json``; {} when there is none. A file that is not a manifest
    (bytes that are not JSON, ``[]``, ``null``, entries that are not objects) raises
    :class:`ManifestError` saying so: it is corrupt, not missing."""
    path = Path(out_dir) / "manifest.json"
    if not path.is_file():
        if path.exists():
            raise ManifestError(f"{path}: is not a file")
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: corrupt (not UTF-8 text)") from None
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: corrupt (not JSON: {exc.msg} at line {exc.lineno})"
                            ) from None
    except OSError as exc:
        raise ManifestError(f"{path}: unreadable ({exc.strerror})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: corrupt (a JSON {_json_kind(data)}, not an object)")
    notebooks = data.get("notebooks", {})
    if not isinstance(notebooks, dict) or not all(isinstance(e, dict)
                                                  for e in notebooks.values()):
        raise ManifestError(f"{path}: corrupt ('notebooks' is not an object of entries)")
    return data


def _json_kind(data: Any) -> str:
    return {list: "list", str: "string", type(None): "null", bool: "boolean", int: "number",
            float: "number"}.get(type(data), type(data).__name__)


def merged_manifest(out_dir: str | Path, entries: dict[str, dict[str, Any]],
                    profile: str) -> dict[str, Any]:
    """``out_dir/manifest.json`` with ``entries`` merged in (others keep their entry). A
    file a new entry wrote is no longer another entry's output: the last writer owns it."""
    manifest = read_manifest(out_dir)
    written = {rel for e in entries.values() for rel in e.get("outputs", {})}
    chapters = {c for e in entries.values() for c in e.get("claims", {})}
    notebooks = {}
    for name, old in manifest.get("notebooks", {}).items():
        if name not in entries and ("outputs" in old or "claims" in old):
            old = {**old, **({"outputs": {r: h for r, h in old["outputs"].items()
                                          if r not in written}} if "outputs" in old else {}),
                   **({"claims": {c: h for c, h in old["claims"].items()
                                  if c not in chapters}} if "claims" in old else {})}
        notebooks[name] = old
    notebooks.update(entries)
    return {
        "generator": GENERATOR,
        "profile": profile,
        "profiles": sorted({e.get("profile", profile) for e in notebooks.values()}),
        "updated": now(),
        "git": git_state(),
        "packages": package_versions(),
        "machine": machine(),
        "notebooks": dict(sorted(notebooks.items())),
    }


# ------------------------------------------------------------------------ staleness


def current_state(src: str | Path, profile: str, params: dict[str, Any]) -> dict[str, Any]:
    """What an entry for ``src`` would record now, before running it."""
    modules = module_hashes(src)
    return {"profile": profile, "parameters": params, "source_sha256": source_hash(src),
            "modules": modules, "code_sha256": combined_hash(modules),
            "packages": package_versions()}


_PHRASES = {  # kind: (changed, new, gone)
    "module": ("module {k} changed", "now imports {k}", "no longer imports {k}"),
    "parameter": ("parameter {k} {old!r} -> {new!r}", "parameter {k} = {new!r} (new)",
                  "parameter {k} no longer set"),
}


def _changes(kind: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changed, added, gone = _PHRASES[kind]
    out = []
    for k in sorted(set(old) | set(new)):
        if k not in new:
            out.append(gone.format(k=k))
        elif k not in old:
            out.append(added.format(k=k, new=new[k]))
        elif old[k] != new[k]:
            out.append(changed.format(k=k, old=old[k], new=new[k]))
    return out


def stale_reasons(entry: dict[str, Any] | None, current: dict[str, Any], out: str | Path,
                  manifest_packages: dict[str, Any] | None = None) -> list[str]:
    """Why ``entry`` (a manifest entry) does not match ``current`` (``current_state``) and
    the outputs in ``out``; [] when it is up to date. ``manifest_packages``: the
    manifest's top-level versions, for entries of an older runner that kept none."""
    if not entry:
        return ["never run into this folder (no manifest entry)"]
    out = Path(out)
    reasons: list[str] = []
    if entry.get("profile") != current["profile"]:
        reasons.append(f"profile {entry.get('profile')} -> {current['profile']}")
    reasons += _changes("parameter", entry.get("parameters") or {}, current["parameters"])
    if entry.get("source_sha256") != current["source_sha256"]:
        reasons.append("notebook source changed")
    if "modules" in entry:
        reasons += _changes("module", entry["modules"], current["modules"])
    else:
        reasons.append("no per-module code hashes (recorded by an older runner)")
    executed = entry.get("executed")
    if not executed or not (out / executed).is_file():
        reasons.append(f"executed notebook {executed or '(none recorded)'} missing")
    if "outputs" not in entry:
        reasons.append("no output hashes (recorded by an older runner)")
    for rel, digest in (entry.get("outputs") or {}).items():
        path = out / rel
        if not path.is_file():
            reasons.append(f"output {rel} missing")
        elif file_sha256(path) != digest:
            reasons.append(f"output {rel} changed since the run")
    if entry.get("claims"):
        try:
            claims = json.loads((out / "claims.json").read_text())
        except (OSError, ValueError):
            claims = {}
        now_hashes = claims_hashes(claims if isinstance(claims, dict) else {},
                                   entry["claims"])
        for chapter, digest in entry["claims"].items():
            if now_hashes.get(chapter) != digest:
                reasons.append(f"claims.json section {chapter!r} "
                               + ("missing" if chapter not in now_hashes else "changed"))
    packages = entry.get("packages", manifest_packages) or {}
    reasons += _package_changes(packages, current["packages"])
    return reasons


def _package_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Changed versions one by one; packages without a recorded version, or no longer
    pinned, as one reason each (an older manifest lacks many)."""
    out = [f"package {k} {old[k]} -> {new[k]}" for k in sorted(set(old) & set(new))
           if old[k] != new[k]]
    for names, what in ((sorted(set(new) - set(old)), "no version recorded for"),
                        (sorted(set(old) - set(new)), "no longer pinned:")):
        if names:
            shown = ", ".join(names[:4]) + (f" (+{len(names) - 4})" if len(names) > 4 else "")
            out.append(f"{what} {shown}")
    return out


def summarize(reasons: list[str], limit: int = MAX_REASONS) -> str:
    """Reasons as one line: the first ``limit``, then how many more."""
    head = "; ".join(reasons[:limit])
    return head + (f"; and {len(reasons) - limit} more" if len(reasons) > limit else "")
