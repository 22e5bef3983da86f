"""The recipe: a typed schema, loading with `base:` inheritance and `a.b=c` overrides, and
validation that reports every problem at once, each with its dotted path and the fix.

The schema is the tree of dataclasses in ``config.py``. Loading goes: YAML → plain dict (base
recipe merged under it, overrides on top) → structural check against the dataclasses (unknown
keys, wrong types, choices, missing values) → typed config → value checks: the general keys here,
each section's own in the module that owns it (``data.check``, ``backends.game_file.check``,
``backends.megatron.layout.check``, ``backends.vllm.check``, ``launch_checks``), all called from :func:`check`.
Nothing runs until all pass.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from sppo_nemo.schema.config import (BUILTIN_PROMPTS, GAME_POLICY, MISSING, SHIPPED_SMOLLM2, Recipe,
                                     choices, is_hub_dataset, looks_like_path, resolve_path, uses_games)
from sppo_nemo import backends
from sppo_nemo.schema.errors import RecipeError, UserError
from sppo_nemo.loading.recipe_checks import check_general
from sppo_nemo.loading.recipe_yaml import SEXAGESIMAL, RecipeLoader

__all__ = ["Recipe", "RecipeError", "load", "check", "to_yaml", "as_dict", "resolve_path"]


# ---------------------------------------------------------------------------- loading


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_data: bool = True) -> Recipe:
    """Read, merge, check and type a recipe; raise RecipeError listing every problem."""
    path = Path(path)
    origins: dict[str, Path] = {}
    raw = _read_with_base(path, seen=(), origins=origins)
    problems: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r}: expected key=value, e.g. trainer.lr=1e-6")
            continue
        try:
            parsed = value if SEXAGESIMAL.match(value.strip()) else \
                OmegaConf.to_container(OmegaConf.from_dotlist([f"x={value}"]), resolve=True)["x"]
        except Exception as exc:
            problems.append(f"{key.strip()}: the override value {value!r} is not valid YAML "
                            f"({type(exc).__name__}); quote it, e.g. {key.strip()}='{value}'")
            continue
        _set_dotted(raw, key.strip(), parsed)
        origins.pop(key.strip(), None)  # the command line, not a file
    structural = _check_structure(raw, Recipe, "")
    problems += structural
    # Check values too, on a typed copy without the structurally bad entries, so that one run of
    # --validate reports every problem, not one round at a time.
    recipe, muted = _build(raw, Recipe, "")
    problems += [p for p in check(recipe, base_dir=path.parent, check_data=check_data and not structural)
                 if not p.startswith(muted)]
    if problems:
        raise RecipeError(str(path), [_name_origin(p, origins, path) for p in problems])
    # Paths were made absolute relative to the recipe file that wrote them (_read_with_base);
    # overrides given on the command line are relative to the working directory.
    if recipe.data.prompts != BUILTIN_PROMPTS and not is_hub_dataset(recipe.data.prompts):
        recipe.data.prompts = str(Path(recipe.data.prompts).expanduser().resolve())
    if recipe.policy.model not in (SHIPPED_SMOLLM2, GAME_POLICY) and looks_like_path(recipe.policy.model):
        recipe.policy.model = str(Path(recipe.policy.model).expanduser().resolve())
    if recipe.game is not None:
        recipe.game = str(Path(recipe.game).expanduser().resolve())
    if recipe.evaluation.prompts is not None:
        recipe.evaluation.prompts = str(Path(recipe.evaluation.prompts).expanduser().resolve())
    return recipe


_PLACEHOLDERS = {str: "placeholder", int: 1, float: 1.0, bool: False}


def _build(raw: Any, schema: type, prefix: str) -> tuple[Any, tuple[str, ...]]:
    """The typed section from ``raw``, leaving out unknown keys and wrongly typed values (reported by
    the structural check); a required value that is missing gets a placeholder, and the dotted names
    of the placeholders and bad values are returned so that their value checks are muted."""
    raw = raw if isinstance(raw, dict) else {}
    kwargs: dict = {}
    muted: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp, name = hints[f.name], f.name
        if dataclasses.is_dataclass(tp):
            kwargs[name], sub = _build(raw.get(name), tp, f"{prefix}{name}.")
            muted += sub
        elif name in raw and raw[name] != MISSING and _type_problem(raw[name], tp) is None:
            kwargs[name] = raw[name]
        elif f.default == MISSING or name in raw:
            base = _strip_optional(tp)
            base = str if choices(base) else base
            if f.default_factory is not dataclasses.MISSING:  # a list key: its empty default
                kwargs[name] = f.default_factory()
            else:
                kwargs[name] = f.default if f.default != MISSING else _PLACEHOLDERS.get(base, "placeholder")
            muted.append(f"{prefix}{name}:")
    return schema(**kwargs), tuple(muted)


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(tp) if a is not type(None)][0]
    return tp


def _name_origin(problem: str, origins: dict[str, Path], top: Path) -> str:
    """A problem with a value set in a `base:` file says which file set it."""
    key = problem.split(":", 1)[0].strip()
    origin = origins.get(key)
    if origin is not None and origin.resolve() != top.resolve():
        return f"{problem} (set in {origin})"
    return problem


def _dotted_keys(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def _read_with_base(path: Path, seen: tuple[Path, ...], origins: dict[str, Path]) -> dict:
    """The recipe at ``path`` merged over its bases; ``origins`` gets the file that set each dotted key."""
    if not path.is_file():
        raise RecipeError(str(path), [f"recipe file not found: {path}; give the path of a YAML recipe (see recipes/)"])
    if path.resolve() in seen:
        raise RecipeError(str(path), [f"base: recipes inherit in a cycle through {path}; remove one `base:`"])
    try:
        plain = yaml.load(path.read_text(encoding="utf-8"), Loader=RecipeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise RecipeError(str(path), [f"not valid YAML: {exc}".replace("\n", " ")]) from None
    if plain is None:
        plain = {}
    if not isinstance(plain, dict):
        raise RecipeError(str(path), [f"<top>: the recipe must be a mapping of keys to values, got a "
                                      f"{type(plain).__name__}; write `name: ...`, `T: ...` etc."])
    try:
        data = OmegaConf.to_container(OmegaConf.create(plain), resolve=True)
    except Exception as exc:  # interpolations such as ${oc.env:VAR}
        raise RecipeError(str(path), [f"cannot resolve an interpolation: {exc}".replace("\n", " ")]) from None
    _anchor_paths(data, path.parent)
    base = data.pop("base", None)
    if base is not None:
        base_path = (path.parent / str(base)).resolve()
        merged = _read_with_base(base_path, seen + (path.resolve(),), origins)
        _deep_update(merged, data)
        data = merged
        own = plain.copy()
        own.pop("base", None)
    else:
        own = data
    origins.update({k: path for k in _dotted_keys(own)})
    return data


def _anchor_paths(data: dict, base_dir: Path) -> None:
    """Relative paths in a recipe are relative to the file that writes them."""
    if isinstance(data.get("game"), str):
        data["game"] = str(resolve_path(data["game"], base_dir))
    for section, key, keep in (("data", "prompts", BUILTIN_PROMPTS), ("policy", "model", SHIPPED_SMOLLM2),
                               ("evaluation", "prompts", None)):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key] != keep:
            value = sec[key]
            if key == "model" and (not looks_like_path(value) or value == GAME_POLICY):
                continue  # a hub id, or the game's initial policy
            if key == "prompts" and is_hub_dataset(value):
                continue  # a hub dataset
            sec[key] = str(resolve_path(value, base_dir))
    evaluation = data.get("evaluation")
    lm_eval = evaluation.get("lm_eval") if isinstance(evaluation, dict) else None
    if isinstance(lm_eval, dict) and isinstance(lm_eval.get("include_path"), str):
        lm_eval["include_path"] = str(resolve_path(lm_eval["include_path"], base_dir))
    judge = evaluation.get("alpaca_eval") if isinstance(evaluation, dict) else None
    if isinstance(judge, dict):
        if isinstance(judge.get("reference"), str) and judge["reference"] != "base":
            judge["reference"] = str(resolve_path(judge["reference"], base_dir))
        if isinstance(judge.get("local_model"), str) and looks_like_path(judge["local_model"]):
            judge["local_model"] = str(resolve_path(judge["local_model"], base_dir))


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        nxt = d.get(part)
        if not isinstance(nxt, dict):
            nxt = d[part] = {}
        d = nxt
    d[parts[-1]] = value


# -------------------------------------------------------------------- structure check


def _check_structure(raw: Any, schema: type, prefix: str) -> list[str]:
    """Unknown keys, wrong types and missing required values, against the dataclass tree."""
    problems: list[str] = []
    if not isinstance(raw, dict):
        return [f"{prefix.rstrip('.') or '<top>'}: expected a mapping, got {type(raw).__name__} {raw!r}"]
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in raw:
        if f"{prefix}{key}" in REMOVED:
            problems.append(f"{prefix}{key}: no longer a key; {REMOVED[f'{prefix}{key}']}")
        elif key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{prefix}{near[0]}'?" if near else f"valid keys: {', '.join(fields)}"
            problems.append(f"{prefix}{key}: unknown key; {hint}")
    for name, f in fields.items():
        path = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            problems += _check_structure(raw.get(name, {}), tp, path + ".")
            continue
        if name not in raw:
            if f.default is MISSING:
                problems.append(f"{path}: required and not set; add `{name}: ...` to the recipe")
            continue
        problem = _type_problem(raw[name], tp)
        if problem:
            hint = _list_form(path, raw[name]) if typing.get_origin(tp) is list else FORMS.get(path, "")
            problems.append(f"{path}: {problem}{hint}")
    return problems


# The forms a key of several forms takes, for the message when a recipe writes another type.
# Keys a recipe may still carry from an older sppo-nemo, with what replaced them.
_ONE_NODE = ("PairRM's workers run on the devices of sppo-run's own node (judge.device), where an iteration's "
             "annotation takes minutes (sppo-run RECIPE --estimate); remove it")
REMOVED = {"judge.launcher": _ONE_NODE, "judge.srun_args": _ONE_NODE}

FORMS = {"trainer.checkpoint_every": '; write a period as "200steps", "30min" or "2h", or null (off)'}
# The form of each list key's items, for the message when a recipe writes something else.
LIST_FORMS = {"launch.env": "a KEY=VALUE string", "launch.container_mounts": "a /host/path:/container/path[:ro] string",
              "launch.setup": "a shell line (a string)"}


def _list_form(path: str, value: Any) -> str:
    """The fix of a list key written otherwise: the form of its items; a mapping given for
    launch.env, the very list to write instead."""
    if path == "launch.env" and isinstance(value, dict):
        items = ", ".join(f"{k}={v}" for k, v in value.items())
        return f"; write a list of KEY=VALUE strings: env: [{items}]"
    form = LIST_FORMS.get(path, "an srun flag (a string, e.g. --container-image=...)" if path.endswith("srun_args")
                          else "a string")
    return f"; write a YAML list, each item {form}"


def _type_name(tp: Any, plural: bool = False) -> str:
    """'float', 'list of floats', 'list of lists of floats'."""
    if typing.get_origin(tp) is list:
        return f"{'lists' if plural else 'list'} of {_type_name(typing.get_args(tp)[0], plural=True)}"
    if choices(tp) is not None:
        return "one of " + ", ".join(choices(tp))
    return tp.__name__ + ("s" if plural else "")


def _type_problem(value: Any, tp: Any) -> str | None:
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if value is None:
        return None if optional else f"must be a {_type_name(tp)}, got null; give a value"
    if typing.get_origin(tp) is list:  # e.g. trainer.megatron.srun_args: list[str]
        if not isinstance(value, list):
            return f"must be a {_type_name(tp)}, got {type(value).__name__} {value!r}"
        for i, item in enumerate(value):
            problem = _type_problem(item, typing.get_args(tp)[0])
            if problem:
                return f"item {i} {problem}"
        return None
    if value == MISSING:
        return "required and not set (???); give a value"
    allowed = choices(tp)
    if allowed is not None:
        return None if value in allowed else f"{value!r} is not one of {', '.join(allowed)}"
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value),
        str: isinstance(value, str),
    }[tp]
    if ok:
        return None
    if tp is float and isinstance(value, float):
        return f"must be a finite float, got {value!r}"
    return f"must be a {tp.__name__}, got {type(value).__name__} {value!r}"


# ------------------------------------------------------------------ cross-field checks


def check(r: Recipe, base_dir: Path = Path("."), check_data: bool = True) -> list[str]:
    """Every impossible value or combination, as messages naming the key and the fix: the general
    keys here, then each section's owner (data, game, megatron layout and model shape)."""
    from sppo_nemo.formats import data

    p = check_general(r, base_dir)
    p += backends.check(r, base_dir)
    from sppo_nemo.loading import launch_checks as launch_check  # no NeMo-Run import: keys and shapes

    p += launch_check.check(r)
    if check_data and r.data.split_size >= 1 and r.data.eval_size >= 0:
        p += data.check(r, base_dir)
    if check_data and r.evaluation.prompts is not None and not uses_games(r):  # games: refused above
        from sppo_nemo.formats import alpaca

        try:
            alpaca.recipe_eval_prompts(r)
        except UserError as exc:
            p.append(str(exc))
    return p


def to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(as_dict(recipe), sort_keys=False, allow_unicode=True)


def as_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)
