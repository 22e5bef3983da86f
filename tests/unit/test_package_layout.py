"""The package's shape, read from its source with ast: no import cycle (function-local imports
count too: a cycle dodged by a local import is still a cycle), no module over 400 lines, the schema
a leaf, megatron-core imported only by the megatron worker's modules, vllm only by its worker."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[2] / "sppo_nemo"
MAX_LINES = 400


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
    assert g["sppo_nemo.config"] == set()
    assert g["sppo_nemo.errors"] == set()


def test_no_module_over_400_lines():
    big = {m: n for m, f in modules().items() if (n := len(f.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}


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
    imports of the package must stay within the standard library (job, chunklog)."""
    assert importers_of("vllm") == {"sppo_nemo.backends.vllm.worker"}
    g = graph()
    assert g["sppo_nemo.backends.vllm.worker"] == {"sppo_nemo.backends.vllm.job", "sppo_nemo.chunklog"}
    assert g["sppo_nemo.backends.vllm.job"] == set() and g["sppo_nemo.chunklog"] == set()


def test_nemo_run_only_in_the_job_layer():
    """NeMo-Run is an optional extra: one module imports it, and only inside functions, so that the
    recipe checks, --status' records and the stage jobs themselves never need it."""
    assert importers_of("nemo_run") == {"sppo_nemo.launch.nemorun"}
    tree = ast.parse((PKG / "launch" / "nemorun.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("nemo_run" in ast.unparse(n) for n in top)
    assert "sppo_nemo.launch.nemorun" not in graph()["sppo_nemo.launch.check"]
