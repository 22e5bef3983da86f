"""Every shipped recipe loads, is named by the one pattern of its folder, and states only what it
changes: no child restates a value of its base, and no ci/ or gpu/ recipe restates a default.

Names (``name:`` is the file's stem):

- ``recipes/<model>_<loss>_<T>iter.yaml``: loss.type and T as named;
- ``recipes/ci/tiny_<loss>[_<variant>].yaml``: the tiny random Llama, loss.type as named;
- ``recipes/games/<game>_<loss>.yaml``: loss.type as named;
- ``recipes/gpu/<base>_<variant>.yaml``: a top-level recipe (its ``base:``) on another backend.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.schema.config import LossType, Recipe
from tests.helpers import RECIPES

pytestmark = pytest.mark.unit

SHIPPED = sorted(RECIPES.rglob("*.yaml"))
IDS = [p.relative_to(RECIPES).as_posix() for p in SHIPPED]
_LOSS = "|".join(sorted(typing.get_args(LossType), key=len, reverse=True))  # sppo_pair before sppo
PATTERNS = {
    # a variant of a root recipe (its base) adds what it changes: smollm2_sppo_3iter_vllm
    ".": re.compile(rf"(?P<model>[a-z0-9]+)_(?P<loss>{_LOSS})_(?P<T>[0-9]+)iter(_(?P<variant>[a-z0-9]+))?"),
    "ci": re.compile(rf"tiny_(?P<loss>{_LOSS})(_[a-z0-9]+)?"),
    "games": re.compile(rf"(?P<game>[a-z0-9]+)_(?P<loss>{_LOSS})"),
    "gpu": re.compile(r"(?P<base>[a-z0-9_]+)_[a-z0-9]+"),
}
VARIANTS = ("ci", "gpu")  # their roots are variants too: they state only what differs from the defaults


@pytest.fixture(scope="module", autouse=True)
def tiny_model(tmp_path_factory):
    """``${oc.env:SPPO_TINY_MODEL}`` of the CI recipes: a real tiny checkpoint directory."""
    from sppo_nemo.testing import build_tiny_llama

    path = build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPPO_TINY_MODEL", str(path))
        yield path


def load(path: Path) -> dict:
    return recipe_mod.as_dict(recipe_mod.load(path, check_data=False))


def own_keys(raw: dict, prefix: str = "") -> dict[str, object]:
    """The dotted leaves a recipe file writes itself (a list is one leaf), ``base`` and ``name`` left out."""
    out: dict[str, object] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(own_keys(value, dotted + "."))
        elif dotted not in ("base", "name"):
            out[dotted] = value
    return out


def get(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def restated(path: Path) -> list[str]:
    """The keys of ``path`` whose value equals what it inherits: from its base when it has one,
    else from the schema's defaults. Paths compare as the loader resolves them (from the file)."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    inherited = load(path.parent / raw["base"]) if "base" in raw else recipe_mod.as_dict(Recipe())
    same = []
    for key, value in own_keys(raw).items():
        was = get(inherited, key)
        if isinstance(value, str) and isinstance(was, str) and Path(was).is_absolute():
            value = str(recipe_mod.resolve_path(value, path.parent).resolve())
        if value == was:
            same.append(key)
    return same


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_shipped_recipe_loads(path: Path, tiny_model: Path):
    r = recipe_mod.load(path, check_data=False)
    assert r.name == path.stem
    if "${oc.env:SPPO_TINY_MODEL" in path.read_text(encoding="utf-8"):
        assert Path(r.policy.model) == tiny_model.resolve()


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_shipped_recipe_is_named_by_its_folder_pattern(path: Path):
    folder = path.parent.relative_to(RECIPES).as_posix()
    assert folder in PATTERNS, f"recipes/{folder}/ has no naming pattern; add one to {__name__}"
    match = PATTERNS[folder].fullmatch(path.stem)
    assert match, f"{path.name} does not follow {PATTERNS[folder].pattern!r}"
    r = recipe_mod.load(path, check_data=False)
    parts = match.groupdict()
    if "loss" in parts:
        assert r.loss.type == parts["loss"], f"{path.name} trains loss.type={r.loss.type}"
    if "T" in parts:
        assert r.T == int(parts["T"]), f"{path.name} runs T={r.T}"
    if "base" in parts:
        base = (path.parent / yaml.safe_load(path.read_text(encoding="utf-8"))["base"]).resolve()
        assert base.parent == RECIPES and base.stem == parts["base"], f"{path.name} varies {base}"
    if parts.get("variant"):
        base = (path.parent / yaml.safe_load(path.read_text(encoding="utf-8"))["base"]).resolve()
        assert base.stem == path.stem.removesuffix("_" + parts["variant"]), f"{path.name} varies {base}"


@pytest.mark.parametrize("path", SHIPPED, ids=IDS)
def test_shipped_recipe_states_only_differences(path: Path):
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if "base" not in raw and path.parent.name not in VARIANTS:
        pytest.skip("a root recipe: it writes its whole setup out")
    assert restated(path) == [], f"{path.relative_to(RECIPES)} restates what it inherits; remove those keys"


def test_a_restated_value_is_found(tmp_path: Path):
    (tmp_path / "base.yaml").write_text("name: base\nT: 2\nthreads: 1\ndata:\n  prompts: p.jsonl\n"
                                        "  split_size: 4\ntrainer:\n  lr: 1.0e-2\n")
    (tmp_path / "ci").mkdir()
    child = tmp_path / "ci" / "child.yaml"
    child.write_text("base: ../base.yaml\nname: child\nT: 2\nthreads: 2\ndata:\n  prompts: ../p.jsonl\n"
                     "trainer:\n  lr: 0.01\n  epochs: 5\n")
    assert restated(child) == ["T", "data.prompts", "trainer.lr"]
    (tmp_path / "root.yaml").write_text("name: root\nK: 5\nloss:\n  type: dpo\n  selection: all\n")
    assert restated(tmp_path / "root.yaml") == ["K", "loss.selection"]
