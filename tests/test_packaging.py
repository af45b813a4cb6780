"""One distribution: gradsmooth, with backends/ and reference/ inside it, and no framework in the core."""

import ast
import importlib
import importlib.util
import pathlib
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_subpackages_import_under_gradsmooth():
    backends = importlib.import_module("gradsmooth.backends")
    reference = importlib.import_module("gradsmooth.reference")
    assert pathlib.Path(backends.__file__).parent.name == "backends"
    assert pathlib.Path(reference.__file__).parent.name == "reference"


def test_no_top_level_backends_or_reference_is_importable_from_elsewhere(tmp_path):
    code = "import importlib.util as u; print(u.find_spec('backends'), u.find_spec('reference'))"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None None"


# what a build leaves in a checkout, never copied into the clean copy the wheel is built from
BUILD_OUTPUTS = (".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".asv")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    """The wheel, built offline (``--no-build-isolation``: the setuptools of this environment)
    from a clean copy of the checkout, so no file a former build left under build/ can slip in."""
    pytest.importorskip("setuptools", minversion="77")  # the test extra has it (license-files)
    source = tmp_path_factory.mktemp("source") / "gradsmooth"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*BUILD_OUTPUTS), symlinks=True)
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("gradsmooth-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def _installed_modules() -> set[str]:
    """Every module of the distribution where it installs: gradsmooth/**, backends/** as
    gradsmooth/backends/**, reference/** as gradsmooth/reference/**."""
    found = set()
    for folder, installed in (("gradsmooth", "gradsmooth"), ("backends", "gradsmooth/backends"),
                              ("reference", "gradsmooth/reference")):
        found |= {f"{installed}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")
                  if "__pycache__" not in p.parts}
    return found


def test_wheel_installs_only_the_gradsmooth_package(wheel):
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"gradsmooth"}
    for module in ("backends/__init__.py", "reference/window.py", "reference/optimizers.py"):
        assert f"gradsmooth/{module}" in names


def test_wheel_holds_every_module_of_the_package_and_no_other(wheel):
    modules = {n for n in wheel.namelist() if n.endswith(".py")}
    expected = _installed_modules()
    assert {"gradsmooth/experiments/runs.py", "gradsmooth/backends/torch/native.py",
            "gradsmooth/backends/mlx/optimizer.py", "gradsmooth/reference/window.py"} <= expected
    assert modules == expected, f"missing: {sorted(expected - modules)}, unexpected: {sorted(modules - expected)}"


def test_wheel_holds_no_tests_docs_benchmarks_or_examples(wheel):
    outside = {"tests", "docs", "benchmarks", "examples"}
    found = [n for n in wheel.namelist() if outside & set(n.split("/")[:-1])]
    assert not found, f"the wheel ships files from outside the package: {found[:10]}"


def test_wheel_ships_the_license_and_the_typing_marker(wheel):
    names = wheel.namelist()
    # PEP 561: one marker at the top of the installed package covers gradsmooth.backends and
    # gradsmooth.reference too, as they install inside it
    assert "gradsmooth/py.typed" in names
    (info,) = {n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info")}
    assert wheel.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
    metadata = wheel.read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "License-File: LICENSE" in metadata.splitlines()


def test_the_license_is_the_mit_license_the_metadata_names():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the gradsmooth authors" in text
    assert 'license = "MIT"' in (ROOT / "pyproject.toml").read_text()
    assert (ROOT / "gradsmooth" / "py.typed").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "gradsmooth").glob("*.py")), ids=lambda p: p.name)
def test_core_imports_no_framework(path):
    tree = ast.parse(path.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"torch", "mlx", "jax", "tensorflow", "cupy"}


def test_public_names_are_exported():
    import gradsmooth

    for name in gradsmooth.__all__:
        assert hasattr(gradsmooth, name)
    assert {"find_blocks", "WindowSmoothing", "MatrixOperator", "smooth", "smooth_stack", "BlockPlan"} <= set(
        gradsmooth.__all__
    )


FRAMEWORKS = {"torch", "mlx", "jax", "tensorflow", "cupy"}


def _package_of(path: pathlib.Path) -> str:
    """The installed package a source file belongs to: backends/torch/x.py -> gradsmooth.backends.torch."""
    parts = list(path.relative_to(ROOT).parent.parts)  # a module's package, or an __init__'s own
    if parts and parts[0] in ("backends", "reference"):
        parts = ["gradsmooth", *parts]
    return ".".join(parts)


def _absolute(node: ast.ImportFrom, package: str) -> str:
    """The module an ``ImportFrom`` names, with a relative one resolved against ``package``."""
    if not node.level:
        return node.module or ""
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(tree: ast.AST, package: str, lazy: bool = True) -> set[str]:
    """Every module the tree imports (``from m import n`` counts as m and m.n): also inside
    functions when ``lazy``, and string imports (``importlib.import_module("m")``)."""
    names: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, package)
            names |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
        if lazy or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return names


def _framework(module: str) -> str | None:
    """The framework a module belongs to: torch.nn -> torch, gradsmooth.backends.mlx -> mlx; None for none."""
    parts = module.split(".")
    if parts[:2] == ["gradsmooth", "backends"] and len(parts) > 2:
        return parts[2]
    return parts[0] if parts[0] in FRAMEWORKS else None


@pytest.mark.parametrize("path", sorted((ROOT / "backends").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_adapters_import_neither_experiments_nor_the_command_line(path):
    imported = _imports(ast.parse(path.read_text()), _package_of(path))
    bad = {m for m in imported if m.split(".")[:2] in (["gradsmooth", "experiments"], ["gradsmooth", "cli"])}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


# the framework each framework module of gradsmooth/experiments may import when imported
FRAMEWORK_MODULES = {"torch_models.py": "torch", "mlx_models.py": "mlx"}


@pytest.mark.parametrize("path", sorted((ROOT / "gradsmooth" / "experiments").glob("*.py")), ids=lambda p: p.name)
def test_experiments_import_frameworks_only_in_their_framework_modules(path):
    eager = _imports(ast.parse(path.read_text()), _package_of(path), lazy=False)
    frameworks = {_framework(m) for m in eager} - {None}
    allowed = {FRAMEWORK_MODULES[path.name]} if path.name in FRAMEWORK_MODULES else set()
    assert frameworks <= allowed, f"{path.name} imports {sorted(frameworks - allowed)} when imported"


def test_the_import_scan_sees_relative_lazy_and_string_imports():
    code = ("from ...experiments import runs\nfrom ... import cli\n"
            "def f():\n    import torch\n    importlib.import_module('gradsmooth.experiments.loop')\n")
    tree = ast.parse(code)
    assert {"gradsmooth.experiments", "gradsmooth.cli", "torch", "gradsmooth.experiments.loop"} <= _imports(
        tree, "gradsmooth.backends.torch")
    assert "torch" not in _imports(tree, "gradsmooth.backends.torch", lazy=False)


def test_importing_the_command_line_imports_no_framework():
    code = ("import sys, gradsmooth.cli, gradsmooth.experiments.runs as r\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'mlx')), sorted(r.BACKENDS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "['mlx',", "'torch']"]


@pytest.mark.parametrize("path", sorted((ROOT / "reference").glob("*.py")), ids=lambda p: p.name)
def test_the_reference_shares_no_code_with_what_it_checks(path):
    # the oracle imports numpy, the standard library and itself: never the core, an adapter or a framework
    imported = _imports(ast.parse(path.read_text()), _package_of(path))
    outside = {m for m in imported if m.split(".")[0] not in {"numpy", "math", "__future__", "typing", "collections"}
               and not m.startswith("gradsmooth.reference")}
    assert not outside, f"reference/{path.name} imports {sorted(outside)}"


def test_the_core_imports_nothing_from_the_adapters_the_experiments_or_the_reference():
    for path in sorted((ROOT / "gradsmooth").glob("*.py")):
        if path.name in ("cli.py", "__main__.py"):  # the command line runs the experiments
            continue
        imported = _imports(ast.parse(path.read_text()), _package_of(path))
        bad = {m for m in imported if m.split(".")[:2] in (["gradsmooth", "backends"], ["gradsmooth", "experiments"],
                                                           ["gradsmooth", "reference"], ["gradsmooth", "cli"])}
        assert not bad, f"gradsmooth/{path.name} imports {sorted(bad)}"
