"""The package's shape (DESIGN.md, Layout): no import cycles between modules or subpackages, and config.py
needs nothing but errors (it is read by models/ and data/, so it must not import their registries)."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_no_import_cycles_between_modules_or_subpackages():
    result = subprocess.run([sys.executable, str(REPO / "checks" / "import_graph.py")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 module cycles, 0 subpackage cycles" in result.stdout


def test_config_imports_no_registry():
    tree = ast.parse((REPO / "src" / "lottery" / "config.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert {m for m in imported if m.startswith("lottery")} == {"lottery.errors"}


def test_few_top_level_modules():
    """The procedure, training engine, run store, experiments, reports and deploy are subpackages; what stays
    on top is the package's face (cli, options, presets) and what every layer reads (config, errors, seeds)."""
    top = sorted(p.stem for p in (REPO / "src" / "lottery").glob("*.py"))
    assert len(top) <= 14, top
