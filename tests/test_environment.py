"""The pins are stated once (requirements.txt); environment.yml must install the same ones."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines, where: str) -> set[tuple[str, str]]:
    """``name==version`` lines as a set; anything that is not an exact pin fails the test."""
    pins = set()
    for line in lines:
        line = line.split(" #")[0].strip()
        if not line or line.startswith("#") or line.startswith("-e ") or line == "-e .":
            continue
        m = PIN.match(line)
        assert m, f"{where}: {line!r} is not an exact name==version pin"
        pins.add((_norm(m.group(1)), m.group(2)))
    return pins


def _requirements(name: str) -> set[tuple[str, str]]:
    return _pins((ROOT / name).read_text().splitlines(), name)


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _env_pip_lines(env: dict) -> list[str]:
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, "environment.yml needs exactly one pip section"
    lines = []
    for entry in pip[0]:
        if entry.startswith("-r "):  # an included requirements file counts as its pins
            lines += (ROOT / entry[3:].strip()).read_text().splitlines()
        else:
            lines.append(entry)
    return lines


def _env_python(env: dict) -> str:
    spec = [d for d in env["dependencies"] if isinstance(d, str) and re.match(r"python\b", d)]
    assert len(spec) == 1, "environment.yml must pin python exactly once"
    m = re.fullmatch(r"python\s*=?=\s*([\d.]+)\*?", spec[0].replace(" ", ""))
    assert m, f"cannot read the python version from {spec[0]!r}"
    return m.group(1)


def test_environment_installs_the_same_pins_as_requirements():
    env_pins = _pins(_env_pip_lines(_environment()), "environment.yml")
    req_pins = _requirements("requirements.txt")
    assert env_pins == req_pins, (
        f"only in environment.yml: {sorted(env_pins - req_pins)}; "
        f"only in requirements.txt: {sorted(req_pins - env_pins)}")


def test_environment_installs_the_package_itself():
    assert "-e ." in [e.strip() for e in _env_pip_lines(_environment())]


def test_weight_wheels_stay_out_of_the_resolver():
    """Their metadata pins ancient torch/numpy: they must never share a resolve with torch."""
    weights = {n for n, _ in _requirements("requirements-weights.txt")}
    assert weights, "requirements-weights.txt lists no pins"
    assert not weights & {n for n, _ in _requirements("requirements.txt")}
    assert not weights & {n for n, _ in _pins(_env_pip_lines(_environment()), "environment.yml")}


def test_no_package_is_pinned_twice():
    for name in ("requirements.txt", "requirements-weights.txt"):
        names = [n for n, _ in _requirements(name)]
        assert len(names) == len(set(names)), f"{name} pins a package twice"


def test_python_versions_agree():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    env_python = _env_python(_environment())
    assert Version(env_python) in SpecifierSet(requires), (
        f"environment.yml python={env_python} violates requires-python {requires!r}")
    here = Version(f"{sys.version_info.major}.{sys.version_info.minor}")
    assert here in SpecifierSet(requires)


def test_installed_versions_match_the_pins():
    """The environment running the tests is the one the pins describe (skips outside it)."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for name, pinned in sorted(_requirements("requirements.txt")):
        try:
            installed = version(name)
        except PackageNotFoundError:
            pytest.skip(f"{name} is not installed: not the project environment")
        if Version(installed).public != Version(pinned).public:
            wrong.append(f"{name} {installed} (pinned {pinned})")
    assert not wrong, "installed versions differ from requirements.txt: " + ", ".join(wrong)


def test_the_tools_make_runs_are_pinned():
    """A tool that make test / make verify invoke (nbval through pytest, lint-imports,
    papermill through the runner) is in the pins, so a fresh `make setup` installs it:
    nbval was once lost from them in a layout change."""
    makefile = (ROOT / "Makefile").read_text()
    verify = (ROOT / "pan_utils" / "study" / "verify.py").read_text()
    pinned = {n for n, _ in _requirements("requirements.txt")}
    used = {"nbval": "--nbval" in verify and "pan_utils.study.verify" in makefile,
            "import-linter": "lint-imports" in makefile, "pytest": "-m pytest" in makefile,
            "papermill": "pan_utils.study.reproduce" in makefile}
    assert used["nbval"], "make verify no longer runs nbval (pan_utils.study.verify)"
    missing = [pkg for pkg, is_used in used.items() if is_used and pkg not in pinned]
    assert not missing, f"make uses {missing}, which requirements.txt does not pin"
