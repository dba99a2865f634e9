"""Packaging: what is needed only to build the extensions is a build requirement, not a run-time
dependency, and scripts/bootstrap.sh installs every build requirement itself (it installs the
package with --no-build-isolation, which does not)."""

import re
import shlex
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()


def test_build_requirements_are_not_runtime_dependencies_and_bootstrap_installs_them():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    build = [_name(r) for r in meta["build-system"]["requires"]]
    runtime = {_name(r) for r in meta["project"]["dependencies"]}
    assert {"ninja", "pybind11"} <= set(build)
    assert not runtime & {"ninja", "pybind11", "setuptools", "wheel"}, runtime
    lines = [ln for ln in (REPO / "scripts" / "bootstrap.sh").read_text().splitlines() if not ln.lstrip().startswith("#")]
    editable = next(i for i, ln in enumerate(lines) if "--no-build-isolation" in ln)
    before = {_name(w) for ln in lines[:editable] if " install " in ln for w in shlex.split(ln.replace('"${PIP[@]}"', ""))}
    assert set(build) <= before, sorted(set(build) - before)
