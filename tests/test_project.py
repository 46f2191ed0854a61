"""The project's set-up files agree with each other, and importing vaelib has no side effects."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
CONDA_NAMES = {
    "torch": "pytorch",
    "playwright": "playwright-python",
}  # PyPI name -> conda-forge name where they differ


def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req):
    return canonical(re.split(r"[\s<>=!~\[;]", req.strip(), maxsplit=1)[0])


def pyproject_requirements():
    """PyPI names of the runtime dependencies and the dev and docs extras (the Makefile installs
    both)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return {requirement_name(r) for r in project["dependencies"] + extras["dev"] + extras["docs"]}


def pyproject_packages():
    """The same packages under their conda-forge names."""
    return {CONDA_NAMES.get(n, n) for n in pyproject_requirements()}


def test_environment_yml_names_the_same_packages_as_pyproject():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert env["channels"][0] == "conda-forge" and "defaults" not in env["channels"]
    conda = {requirement_name(d) for d in env["dependencies"] if isinstance(d, str)} - {
        "python",
        "pip",
    }
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_section  # vaelib itself, editable
    conda |= {
        requirement_name(d) for d in pip_section if d != "-e ."
    }  # packages that only PyPI has
    assert conda == pyproject_packages(), (
        f"only in environment.yml: {conda - pyproject_packages()}; only in pyproject: "
        f"{pyproject_packages() - conda}"
    )
    assert any(d.startswith("python=3.11") for d in env["dependencies"] if isinstance(d, str))


def test_constraints_pin_cpu_torch_and_every_direct_dependency():
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line is not an exact pin: {line!r}"
            pins[canonical(name)] = version
    assert pins["torch"] == "2.13.0"
    missing = {n for n in pyproject_requirements() if n not in pins}
    assert not missing, f"direct dependencies without a pin in constraints.txt: {missing}"


def test_every_install_command_uses_the_constraints():
    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line]
    assert installs and all("-c constraints.txt" in line for line in installs)
    assert "make test" in (REPO / ".ci" / "run").read_text()
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def test_importing_vaelib_runs_nothing():
    # No argparse, downloads, seeding or file writes at import: import every module in a fresh
    # interpreter and check that the global RNG state is untouched and no argparse was imported.
    code = (
        "import sys, torch; s = torch.random.get_rng_state().clone();"
        "import vaelib, vaelib.distributions, vaelib.toy, vaelib.estimators, vaelib.plotting;"
        "import importlib, pkgutil;"
        "[importlib.import_module('vaelib.' + m.name) for m in "
        "pkgutil.iter_modules(vaelib.__path__)];"
        "assert torch.equal(s, torch.random.get_rng_state()), 'RNG state changed';"
        "print('ok')"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_readme_links_point_to_files_that_exist():
    readme = (REPO / "README.md").read_text()
    targets = set(re.findall(r"\]\(((?:notebooks|figures)/[^)#]+)\)", readme))
    assert len(targets) >= 10, "the README's checklist links to notebooks and figures"
    missing = sorted(t for t in targets if not (REPO / t).exists())
    assert not missing, f"README links to missing files: {missing}"


def test_readme_opens_with_the_two_commands():
    head = (REPO / "README.md").read_text().split("##")[0]
    assert head.index("make run") < head.index("make test")
