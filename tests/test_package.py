"""The layers import one way: pipeline -> transforms -> attribution; no Beam in the engine."""

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
FORBIDDEN = {"attribution": {"apache_beam", "transforms", "pipeline"}, "transforms": {"pipeline"}}


def imported_roots(path):
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0]


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_run_one_way(layer):
    for path in sorted((REPO / layer).rglob("*.py")):
        bad = set(imported_roots(path)) & FORBIDDEN[layer]
        assert not bad, f"{path.relative_to(REPO)} imports {bad}"


def test_engine_has_no_beam_dependency():
    code = "import sys, attribution; assert 'apache_beam' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_import_attribution_loads_tensorflow_only_when_needed():
    code = (
        "import sys, attribution, attribution.hashing, attribution.quadrature\n"
        "assert 'tensorflow' not in sys.modules\n"
        "from attribution import METHODS, rule\n"
        "assert 'tensorflow' not in sys.modules and rule('riemann_left', 4)\n"
        "from attribution import IntegratedGradients, load_model\n"
        "assert 'tensorflow' in sys.modules and callable(load_model)\n"
        "assert set(attribution.__all__) <= set(dir(attribution))\n"
        "try:\n    attribution.no_such_name\nexcept AttributeError:\n    pass\n"
        "else:\n    raise AssertionError('no AttributeError')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
