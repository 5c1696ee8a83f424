"""The house's floors: the import-linter contracts hold, a module importing a floor above it breaks them, no
module import cycle exists, and every subpackage says in its docstring what it holds and what it may import."""

import ast
import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "qingbert"
FLOORS = ["training", "models", "data", "pretraining", "tasks", "distillation", "embeddings", "deploy", "serve",
          "pipeline", "cli"]


def lint_imports(config: Path, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = {"PYTHONPATH": str(pythonpath), "PATH": "", "HOME": str(cwd)}
    cmd = [sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
           "sys.argv = ['lint-imports', '--config', sys.argv[1], '--no-cache']; lint_imports_command()", str(config)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_contracts_hold():
    r = lint_imports(ROOT / "pyproject.toml", ROOT, ROOT / "src")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout and "floors" in r.stdout.lower()


def test_an_upward_import_breaks_the_floors(tmp_path):
    """A copy of the package where the training loop imports the deploy floor: lint-imports must fail."""
    src = tmp_path / "src"
    shutil.copytree(PACKAGE, src / "qingbert", ignore=shutil.ignore_patterns("__pycache__"))
    loop = src / "qingbert" / "training" / "loop.py"
    loop.write_text(loop.read_text(encoding="utf-8") + "\n\ndef _upward():\n    from qingbert.deploy import index\n\n"
                    "    return index\n", encoding="utf-8")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    r = lint_imports(tmp_path / "pyproject.toml", tmp_path, src)
    assert r.returncode != 0, r.stdout
    assert "qingbert.training.loop -> qingbert.deploy.index" in r.stdout


def test_no_import_cycle():
    """Strongly connected components of the module graph (function-local imports included) are single modules."""
    graph = grimp.build_graph("qingbert", include_external_packages=False)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 5000))
    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    assert cycles == []


@pytest.mark.parametrize("floor", FLOORS)
def test_every_floor_says_what_it_holds(floor):
    init = PACKAGE / floor / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
    assert doc and "import" in doc, f"{init}: the docstring says what the floor holds and what it may import"
    for module in sorted((PACKAGE / floor).glob("*.py")):
        if module.name != "__init__.py":
            assert f"``{module.stem}``" in doc, f"{init}: the docstring names {module.stem}"


def test_no_private_name_imported_across_modules():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qingbert"):
                offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.module}.{a.name}"
                              for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert offenders == []


def test_import_qingbert_stays_light():
    code = ("import sys, qingbert; heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'faiss', 'gensim', "
            "'fastapi') if m in sys.modules]; print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    assert importlib.import_module("qingbert").load is importlib.import_module("qingbert.deploy.inference").load


def test_a_missing_extra_names_its_pip_install(monkeypatch):
    import tomllib

    from qingbert.errors import EXTRAS, QingbertError, require

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    assert set(EXTRAS.values()) <= set(extras) and "all" in extras
    for module, extra in (("faiss", "search"), ("gensim.models", "macbert"), ("onnxruntime", "export"),
                          ("fastapi", "serve"), ("scipy.stats", "embeddings")):
        for name in {module, module.split(".")[0]}:  # as if it were not installed, even if a test imported it
            monkeypatch.setitem(sys.modules, name, None)
        with pytest.raises(QingbertError, match=rf"pip install 'qingbert\[{extra}\]'"):
            require(module, "this verb")
