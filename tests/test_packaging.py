"""Packaging checks: dependencies, layout, Bazel targets and the CI command."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
import setuptools
from packaging.requirements import Requirement

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The packages of DESIGN.md's "Layout" section, and their one-way dependencies.
PACKAGES = ("keras_layers", "tfgancompress", "tfgancompress.models", "training")
LIBRARIES = {
    "keras_layers": [],
    "tfgancompress": ["keras_layers"],
    "training": ["tfgancompress"],
}
FORBIDDEN_IMPORTS = {
    "keras_layers": {"tfgancompress", "training"},
    "tfgancompress": {"training"},
    "training": set(),
}

REQUIRED = {
    "tensorflow": "2.21.0",
    "keras": "3.15.0",
    "tensorflow-model-optimization": "0.8.1",
    "tf2onnx": None,
    "onnxruntime": None,
    "absl-py": None,
    "ai-edge-litert": "2.3.0",
}
BANNED = {"tensorflow-addons", "torch", "torchvision", "tensorflow-cpu", "vintagify"}


def _setup_keywords() -> dict:
    """The literal keyword arguments of setup.py's `setup(...)` call."""
    tree = ast.parse((ROOT / "setup.py").read_text(encoding="utf-8"))
    names = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            names[node.targets[0].id] = node.value
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setup"
    ]
    assert len(calls) == 1, "setup.py must call setup() exactly once"
    keywords = {}
    for keyword in calls[0].keywords:
        value = keyword.value
        if isinstance(value, ast.Name):
            value = names[value.id]
        try:
            keywords[keyword.arg] = ast.literal_eval(value)
        except ValueError:
            continue
    return keywords


def _requirements(specs) -> dict[str, Requirement]:
    requirements = [Requirement(spec) for spec in specs]
    return {req.name.lower().replace("_", "-"): req for req in requirements}


def test_install_requires_pins_the_stack():
    requirements = _requirements(_setup_keywords()["install_requires"])
    for name, version in REQUIRED.items():
        assert name in requirements, f"setup.py install_requires lacks {name}"
        if version is not None:
            assert requirements[name].specifier.contains(version), (name, version)
    assert not requirements["tensorflow"].specifier.contains("2.20.0")
    assert not requirements["keras"].specifier.contains("2.15.0")


def test_no_banned_dependency_anywhere():
    keywords = _setup_keywords()
    specs = list(keywords["install_requires"])
    for extra in keywords["extras_require"].values():
        specs.extend(extra)
    assert not BANNED & set(_requirements(specs))


def test_extras_used_by_the_makefile_exist():
    extras = _setup_keywords()["extras_require"]
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    used = re.search(r'install -e "\.\[([\w,]+)\]"', makefile)
    assert used, "Makefile must install the package in editable mode with extras"
    for extra in used.group(1).split(","):
        assert extra in extras, f"Makefile installs extra [{extra}] setup.py lacks"
    test_tools = _requirements(extras["test"])
    assert {"pytest", "ruff"} <= set(test_tools)


def test_makefile_installs_vintagify_without_its_torch_dependency():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "VINTAGIFY := vintagify==0.1.2" in makefile
    assert "install --no-deps $(VINTAGIFY)" in makefile


def test_python_requires_allows_310_and_up():
    spec = Requirement("python" + _setup_keywords()["python_requires"]).specifier
    assert spec.contains("3.10") and spec.contains("3.11")
    assert not spec.contains("3.9")


@pytest.mark.parametrize("package", PACKAGES)
def test_design_layout_packages_exist_and_are_packaged(package):
    folder = ROOT / package.replace(".", "/")
    assert (folder / "__init__.py").is_file(), f"{folder} is not a package"
    found = setuptools.find_packages(
        where=str(ROOT), include=["tfgancompress*", "keras_layers*", "training*"]
    )
    assert package in found


def _bazel_libraries() -> dict[str, dict]:
    """Evaluates BUILD (Starlark is Python syntax here) with stub rules."""
    libraries = {}

    def glob(include, exclude=(), allow_empty=True):
        paths = {p for pattern in include for p in ROOT.glob(pattern)}
        paths -= {p for pattern in exclude for p in ROOT.glob(pattern)}
        return sorted(str(p.relative_to(ROOT)) for p in paths if p.is_file())

    def py_library(name, srcs=(), deps=(), **kwargs):
        libraries[name] = {"srcs": list(srcs), "deps": list(deps), **kwargs}

    def package(**kwargs):
        return None

    source = (ROOT / "BUILD").read_text(encoding="utf-8")
    exec(source, {"glob": glob, "py_library": py_library, "package": package})
    return libraries


def test_build_has_one_py_library_per_package_with_one_way_deps():
    libraries = _bazel_libraries()
    assert set(libraries) == set(LIBRARIES)
    for name, deps in LIBRARIES.items():
        assert libraries[name]["deps"] == [f":{dep}" for dep in deps], name


def test_build_globs_cover_every_module_once():
    libraries = _bazel_libraries()
    for name in LIBRARIES:
        modules = sorted(
            str(p.relative_to(ROOT))
            for p in (ROOT / name).rglob("*.py")
            if "__pycache__" not in p.parts
        )
        assert libraries[name]["srcs"] == modules, name


def _imported_top_level(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN_IMPORTS))
def test_dependencies_point_one_way(package):
    modules = sorted((ROOT / package).rglob("*.py"))
    assert modules, f"{package} has no modules"
    for module in modules:
        bad = _imported_top_level(module) & FORBIDDEN_IMPORTS[package]
        assert not bad, f"{module.relative_to(ROOT)} imports {sorted(bad)}"


def _readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```(?:bash|sh|console)\n(.*?)```", readme, flags=re.S)
    commands = [
        line.split("#")[0].strip() for block in blocks for line in block.splitlines()
    ]
    tests = [command for command in commands if re.fullmatch(r"make test\b.*", command)]
    assert len(tests) == 1, f"README must show one test command, found {tests}"
    return tests[0]


def test_ci_runs_the_readme_test_command():
    command = _readme_test_command()
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.split("#")[0].strip() for line in script.splitlines()]
    assert command in lines, f".ci/run does not run the README's `{command}`"
    assert script.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in lines
    assert "bazel build //..." in lines


def _makefile_recipes() -> dict[str, list[str]]:
    """Each Makefile target with its recipe lines (tab-indented)."""
    recipes: dict[str, list[str]] = {}
    target = None
    for line in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines():
        rule = re.match(r"^([\w.-]+):(?!=)", line)
        if rule:
            target = rule.group(1)
            recipes[target] = [line]
        elif line.startswith("\t") and target:
            recipes[target].append(line.strip())
    return recipes


def test_readme_commands_are_makefile_targets():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    recipes = _makefile_recipes()
    for target in ("demo", "test"):
        assert re.search(rf"^make {target}\b", readme, flags=re.M), target
        assert recipes[target][0].startswith(f"{target}: install"), target
    assert "$(PYTHON) -m tfgancompress.demo" in recipes["demo"]
    assert "$(PYTHON) -m ruff check ." in recipes["lint"]
    assert "$(PYTHON) -m ruff format --check ." in recipes["lint"]
    assert any("-m pytest -q" in line for line in recipes["test"])
    assert "bazel build //..." in recipes["bazel"]
    assert "tensorflow-addons" in readme
