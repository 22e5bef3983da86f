"""The package's shape, read from its source with ast: every module in a layer, imports only
downward between layers (the floor plan in ``sppo_nemo/__init__.py``), no import cycle (function-local
imports count too: a cycle dodged by a local import is still a cycle), the schema a leaf,
megatron-core imported only by the megatron worker's modules, vllm only by its worker. A module
over about 500 lines is a warning, not a failure: split where a second concern shows, not at a count."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[2] / "sppo_nemo"
SOFT_MAX_LINES = 500
# Lowest first. A module belongs to the first prefix it matches; it may import its own layer and the
# layers below, never above. ``sppo_nemo`` itself (the version) is below everything.
LAYERS = ("schema", "maths", "formats", "process", "backends", "loading", "stages", "run", "launch",
          "cli|__main__|testing")


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` imports, anywhere in its body."""
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_the_schema_and_errors_are_leaves():
    g = graph()
    assert g["sppo_nemo.schema.config"] == set()
    assert g["sppo_nemo.schema.errors"] == set()


def layer(module: str) -> int:
    if module == "sppo_nemo":
        return -1
    top = module.split(".")[1]
    for i, names in enumerate(LAYERS):
        if top in names.split("|"):
            return i
    raise AssertionError(f"{module} is in no layer: put it in one of the packages of LAYERS")


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} ({LAYERS[layer(m)]}) imports {t} ({LAYERS[layer(t)]})"
                  for m, ts in edges.items() for t in ts if layer(t) > layer(m))


def test_layer_rule_finds_a_planted_upward_import():
    edges = {"sppo_nemo.maths.loss": {"sppo_nemo.schema.config"}, "sppo_nemo.schema.config": set()}
    assert upward_imports(edges) == []
    edges["sppo_nemo.schema.config"] = {"sppo_nemo.run.runner"}
    assert upward_imports(edges) == ["sppo_nemo.schema.config (schema) imports sppo_nemo.run.runner (run)"]


def test_every_module_in_a_layer_and_imports_only_downward():
    g = graph()
    loose = [m for m in g if m.count(".") == 1 and m.split(".")[1] not in {"cli", "__main__"} and
             not modules()[m].name == "__init__.py"]
    assert loose == [], "the package root keeps cli.py and __main__.py only; give these a layer package"
    assert upward_imports(g) == []
    for m, f in modules().items():  # a smell, not a rule: said in pytest's warnings summary
        if (n := len(f.read_text(encoding="utf-8").splitlines())) > SOFT_MAX_LINES:
            warnings.warn(f"{m} has {n} lines: look for a second concern to move out", stacklevel=1)


def importers_of(top: str) -> set[str]:
    """The package modules that import ``top`` (or a submodule), function-local imports included."""
    users = set()
    for m, f in modules().items():
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n.split(".")[0] == top for n in names):
                users.add(m)
    return users


def test_megatron_core_only_in_the_megatron_worker():
    users = importers_of("megatron")
    assert users and all(m.startswith("sppo_nemo.backends.megatron.") for m in users), users
    assert "sppo_nemo.backends.megatron.controller" not in users


def test_vllm_only_in_the_vllm_worker():
    """sppo-run never imports vllm: it lives in the worker, run by vLLM's own interpreter, whose
    imports of the package must stay within the standard library (job, chunklog, children)."""
    assert importers_of("vllm") == {"sppo_nemo.backends.vllm.worker"}
    g = graph()
    stdlib_only = {"sppo_nemo.backends.vllm.job", "sppo_nemo.formats.chunklog", "sppo_nemo.process.children"}
    assert g["sppo_nemo.backends.vllm.worker"] == stdlib_only
    assert all(g[m] == set() for m in stdlib_only)


def test_lm_eval_and_sklearn_each_in_one_module():
    """lm-eval loads models: its one importer is the worker sppo-run starts as a process of its own.
    scikit-learn fits AlpacaEval's length-control GLM, imported inside that function only."""
    assert importers_of("lm_eval") == {"sppo_nemo.backends.lm_eval.worker"}
    assert importers_of("sklearn") == {"sppo_nemo.maths.length_control"}


def test_nemo_run_only_in_the_job_layer():
    """NeMo-Run is an optional extra: one module imports it, and only inside functions, so that the
    recipe checks, --status' records and the stage jobs themselves never need it."""
    assert importers_of("nemo_run") == {"sppo_nemo.launch.nemorun"}
    tree = ast.parse((PKG / "launch" / "nemorun.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("nemo_run" in ast.unparse(n) for n in top)
    assert "sppo_nemo.launch.nemorun" not in graph()["sppo_nemo.loading.launch_checks"]
