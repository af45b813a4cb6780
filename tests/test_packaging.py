"""One distribution: gradsmooth, with backends/ and reference/ inside it, and no framework in the core."""

import ast
import importlib
import importlib.util
import pathlib
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


def test_wheel_installs_only_the_gradsmooth_package(tmp_path):
    have_setuptools = importlib.util.find_spec("setuptools") is not None
    cmd = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)]
    if have_setuptools:
        cmd.append("--no-build-isolation")
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("gradsmooth-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"gradsmooth"}
    for module in ("backends/__init__.py", "reference/window.py", "reference/optimizers.py"):
        assert f"gradsmooth/{module}" in names


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
