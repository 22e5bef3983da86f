"""One module per stage of an iteration (paper, Algorithm 1): generate → annotate → build →
train → evaluate. Each has ``NAME``, ``inputs(ctx, t)`` — one frozen object holding everything the
stage reads (recipe values, backend specs, references to π_t and to the upstream stages it reads) —
and ``run(inputs, workdir, bar)``, which reads nothing else. The stage's fingerprint is derived
from that object (:func:`fingerprint`), so a key that ``run`` uses cannot be missing from it."""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Iterator

from sppo_nemo.schema.config import Recipe
from sppo_nemo.stages import annotate, build, evaluate, generate, train

STAGES: tuple[ModuleType, ...] = (generate, annotate, build, train, evaluate)


def plan(recipe: Recipe) -> Iterator[tuple[int, ModuleType]]:
    """(iteration, stage module) in execution order; iteration 0 evaluates the base policy π_1."""
    if recipe.evaluation.enabled:
        yield 0, evaluate
    for t in range(1, recipe.T + 1):
        for stage in STAGES:
            if stage is evaluate and not recipe.evaluation.enabled:
                continue
            yield t, stage


def fingerprint(inputs: Any) -> dict:
    """A stage's fingerprint from its inputs: references and backend specs by their own
    ``fingerprint()`` (a digest, a model key, the keys a backend reads), config sections as dicts."""
    return {f.name: _value(getattr(inputs, f.name)) for f in dataclasses.fields(inputs)}


def recipe_key(inputs: Any, key: str) -> str:
    """The recipe key that a flattened fingerprint key of ``inputs`` stands for, for a stale stage's
    message: a backend spec's keys are nested under the inputs' field that holds it (the train
    stage's ``trainer.trainer.lr`` is the recipe's ``trainer.lr``), so the spec names them; any other
    key is named as it is."""
    field, _, rest = key.partition(".")
    value = getattr(inputs, field, None)
    if rest and hasattr(value, "recipe_key"):
        return value.recipe_key(rest)
    return key


def _value(v: Any) -> Any:
    if hasattr(v, "fingerprint"):
        return v.fingerprint()
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return v
