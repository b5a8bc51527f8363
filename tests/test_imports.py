"""Import hygiene: the light commands never load torch, built-in components can be planned
without it, and the package's import contracts (pyproject ``[tool.importlinter]``) hold."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "diffusers", "transformers", "accelerate")

# Runs the CLI with torch & co. made unimportable, then prints which heavy modules got loaded.
_CLI = r"""
import sys, importlib.abc
HEAVY = {heavy!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in HEAVY:
            raise ImportError("blocked " + name)
if {block!r}:
    sys.meta_path.insert(0, Block())
sys.argv = ["eval-learn", *sys.argv[1:]]
from evallearn.cli import main
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print("HEAVY:" + ",".join(sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)), file=sys.stderr)
sys.exit(code)
"""


def _cli(*args, cwd, block):
    return subprocess.run([sys.executable, "-c", _CLI.format(heavy=HEAVY, block=block), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _loaded(res) -> str:
    return next(line for line in res.stderr.splitlines() if line.startswith("HEAVY:"))[len("HEAVY:"):]


def _results(path: Path, name: str, value: float) -> None:
    m = {"after": {"value": value, "higher_is_better": True}, "before": {"value": 0.25}, "delta": value - 0.25}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(
        {"run": {"name": name}, "technique": {"name": "uce"}, "config": {"concept": {"name": "circle"}},
         "model": {"ref": "toy"}, "metrics": {"ua": m}}))


@pytest.mark.parametrize("block", [False, True], ids=["loaded", "unimportable"])
def test_version_compare_and_validate_do_not_import_torch(tmp_path, block):
    res = _cli("--version", cwd=tmp_path, block=block)
    assert res.returncode == 0 and res.stdout.startswith("eval-learn "), res.stderr
    assert _loaded(res) == ""
    _results(tmp_path / "a", "a", 0.75)
    _results(tmp_path / "b", "b", 0.5)
    res = _cli("compare", tmp_path, cwd=tmp_path, block=block)
    assert res.returncode == 0 and "0.750" in res.stdout and "+0.500" in res.stdout, res.stderr
    assert _loaded(res) == ""
    for config in ("quickstart.yaml", "smoke_tiny_random.yaml"):
        res = _cli("validate", ROOT / "examples" / config, cwd=tmp_path, block=block)
        assert res.returncode == 0 and res.stdout.startswith("ok: "), (config, res.stdout, res.stderr)
        assert _loaded(res) == "", config
    assert not (tmp_path / "runs").exists()


#: built-in components whose module needs torch at import (none: a subclass of a torch or diffusers
#: class — a pipeline, an nn.Module — is built on first use, so ``validate`` never loads torch)
NEEDS_TORCH_AT_IMPORT: set[tuple[str, str]] = set()

_COMPONENTS = r"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {heavy!r}:
            raise ImportError("blocked " + name)
sys.meta_path.insert(0, Block())
from evallearn import registry
for kind, reg in registry.ALL.items():
    for name in reg.names():
        try:
            reg.get(name)
        except ImportError:
            print(kind, name)
"""


def test_builtin_components_import_without_torch():
    res = subprocess.run([sys.executable, "-c", _COMPONENTS.format(heavy=HEAVY)], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    needing = {tuple(line.split()) for line in res.stdout.splitlines()}
    assert needing == NEEDS_TORCH_AT_IMPORT, (
        f"now needing torch at import: {sorted(needing - NEEDS_TORCH_AT_IMPORT)}; "
        f"no longer: {sorted(NEEDS_TORCH_AT_IMPORT - needing)} (update the list)")


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=os.pathsep.join([str(Path(sys.executable).parent),
                                                             os.environ.get("PATH", "")]))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    res = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop()
                    on.discard(x)
                    comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_cycle_finder_finds_a_known_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_imports_itself_through_others():
    """No import cycle between modules, counting imports inside functions (what grimp sees)."""
    grimp = pytest.importorskip("grimp")
    g = grimp.build_graph("evallearn", include_external_packages=False, cache_dir=None)
    graph = {m: set(g.find_modules_directly_imported_by(m)) for m in g.modules}
    assert _cycles(graph) == []
