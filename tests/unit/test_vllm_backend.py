"""generation.backend=vllm without vllm: the recipe keys and their checks, the fingerprint, the chunk
grid, the job folder, and the controller's pure helpers (engine count, device placement, failure
messages, resume), with worker processes replaced by in-process fakes. Nothing here imports vllm,
starts a process or loads a model; every expectation is worked by hand."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.backends import generator_spec
from sppo_nemo.backends.vllm import check as vcheck
from sppo_nemo.backends.vllm import controller
from sppo_nemo.backends.vllm.controller import VllmUnavailable, VllmWorkerFailed, VLLMGenerator
from sppo_nemo.backends.vllm.job import FAILED, READY, EngineSettings, Job, Sampling, shard_log, worker_log
from sppo_nemo.formats.chunklog import ChunkLog
from sppo_nemo.schema.config import (EvalConfig, GenerationConfig, PolicyConfig, Recipe, SamplingConfig, TrainerConfig,
                                     VllmConfig)
from sppo_nemo.schema.protocols import Prompt, Sample, SamplingParams
from sppo_nemo.loading.recipe import RecipeError
from sppo_nemo.backends.sampling import chunk_grid
from sppo_nemo.maths.seeds import derive_seed

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "recipes" / "smollm2_sppo_3iter.yaml"  # max_prompt_length 256, max_length 320, 48 new tokens
K = "generation.vllm."


def vrecipe(model: str = "smollm2", backend: str = "vllm", max_new: int = 48, eval_new: int | None = None,
            max_prompt: int = 256, max_length: int = 320, **v) -> Recipe:
    return Recipe(name="x", policy=PolicyConfig(model=model),
                  sampling=SamplingConfig(max_new_tokens=max_new),
                  generation=GenerationConfig(backend=backend, vllm=VllmConfig(**v)),
                  trainer=TrainerConfig(max_prompt_length=max_prompt, max_length=max_length),
                  evaluation=EvalConfig(max_new_tokens=eval_new))


def problems(base_dir: Path = Path("."), **kw) -> list[str]:
    return vcheck.check(vrecipe(**kw), base_dir)


# ------------------------------------------------------------------------ check.check


def test_default_vllm_keys_have_no_problems() -> None:
    assert problems() == []


def test_every_bad_key_is_reported_at_once_with_its_dotted_key() -> None:
    got = problems(tensor_parallel=0, engines=0, max_model_len=0, gpu_memory_utilization=0.0, kv_cache_gib=-1.0,
                   python="")
    assert got == [
        f"{K}tensor_parallel: 0; must be at least 1",
        f"{K}engines: 0; must be at least 1 (or null)",
        f"{K}max_model_len: 0; must be at least 1 (or null)",
        f"{K}gpu_memory_utilization: 0.0; must be in (0, 1], e.g. 0.9",
        f"{K}kv_cache_gib: -1.0; must be positive (GiB), or null",
        f"{K}python: empty; give the interpreter that has vllm (bash scripts/vllm_venv.sh prints its folder: "
        f"<folder>/bin/python), or null for this one",
    ]


@pytest.mark.parametrize("gmu, bad", [(1.5, True), (1.0, False), (0.01, False), (-0.1, True)])
def test_gpu_memory_utilization_must_be_in_0_1(gmu: float, bad: bool) -> None:
    got = problems(gpu_memory_utilization=gmu)
    assert got == ([f"{K}gpu_memory_utilization: {gmu}; must be in (0, 1], e.g. 0.9"] if bad else [])


def test_a_blank_python_is_empty_but_a_path_is_not_checked_here() -> None:
    assert [p.split(";")[0] for p in problems(python="   ")] == [f"{K}python: empty"]
    assert problems(python="/no/such/python") == []  # existence is checked where the run starts


def test_max_model_len_too_small_names_the_needed_length() -> None:
    # 256 prompt + max(48 sampling, 100 evaluation) new tokens = 356
    (msg,) = problems(max_model_len=355, eval_new=100)
    assert msg.startswith(f"{K}max_model_len: 355 holds no prompt of trainer.max_prompt_length=256 "
                          f"with a response of 100 new tokens (needs 356)")
    assert problems(max_model_len=356, eval_new=100) == []
    # without an evaluation length: 256 + 48 = 304
    assert "(needs 304)" in problems(max_model_len=303)[0]
    assert problems(max_model_len=304) == []


def write_config(tmp_path: Path, cfg) -> str:
    d = tmp_path / "tiny-vllm-policy"
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return "./tiny-vllm-policy"  # relative to the recipe's folder (base_dir), not the working dir


def test_tensor_parallel_must_divide_heads_of_a_local_config(tmp_path: Path) -> None:
    model = write_config(tmp_path, {"num_attention_heads": 6, "num_key_value_heads": 2})
    assert problems(tmp_path, model=model, tensor_parallel=2) == []
    assert problems(tmp_path, model=model, tensor_parallel=3) == [
        f"{K}tensor_parallel: 3 does not divide the policy's 2 key/value heads; choose a divisor of 2"]
    assert problems(tmp_path, model=model, tensor_parallel=4) == [
        f"{K}tensor_parallel: 4 does not divide the policy's 6 attention heads; choose a divisor of 6",
        f"{K}tensor_parallel: 4 does not divide the policy's 2 key/value heads; choose a divisor of 2"]


def test_tensor_parallel_against_the_shipped_smollm2_shape() -> None:
    assert problems(tensor_parallel=3) == []  # 9 heads, 3 key/value heads
    assert problems(tensor_parallel=2) == [
        f"{K}tensor_parallel: 2 does not divide the policy's 9 attention heads; choose a divisor of 9",
        f"{K}tensor_parallel: 2 does not divide the policy's 3 key/value heads; choose a divisor of 3"]


def test_a_damaged_config_is_one_cannot_read_problem(tmp_path: Path) -> None:
    model = write_config(tmp_path, "{not json")
    (msg,) = problems(tmp_path, model=model, tensor_parallel=2)
    assert msg.startswith(f"policy.model: cannot read {model}/config.json")


def test_a_hub_id_policy_is_not_looked_up() -> None:
    assert problems(model="org/unknown-model", tensor_parallel=7) == []  # no network in the check


def test_recipe_load_reports_vllm_problems_with_the_others() -> None:
    with pytest.raises(RecipeError) as info:
        recipe_mod.load(SHIPPED, ["generation.backend=vllm", "generation.vllm.engens=2",
                                  "generation.vllm.tensor_parallel=2", "generation.vllm.gpu_memory_utilization=1.5"],
                        check_data=False)
    got = info.value.problems
    assert f"{K}engens: unknown key; did you mean '{K}engines'?" in got
    assert f"{K}gpu_memory_utilization: 1.5; must be in (0, 1], e.g. 0.9" in got
    assert sum(p.startswith(f"{K}tensor_parallel: 2 does not divide") for p in got) == 2
    assert len(got) == 4, got


def test_recipe_load_with_vllm_and_the_check_skipped_for_hf() -> None:
    r = recipe_mod.load(SHIPPED, ["generation.backend=vllm"], check_data=False)
    assert r.generation.vllm == VllmConfig()
    # an hf recipe does not check the vllm keys it does not use
    r = recipe_mod.load(SHIPPED, ["generation.vllm.tensor_parallel=0"], check_data=False)
    assert r.generation.backend == "hf" and r.generation.vllm.tensor_parallel == 0


# ------------------------------------------------------------------------ check.model_len


@pytest.mark.parametrize("kw, want", [
    (dict(), 320),  # max(320, 256 + 48 = 304)
    (dict(eval_new=100), 356),  # max(320, 256 + 100)
    (dict(eval_new=10), 320),  # evaluation shorter than sampling: 256 + 48 = 304 < 320
    (dict(max_prompt=512, max_length=1024, max_new=256), 1024),  # the schema's defaults: max(1024, 768)
    (dict(max_prompt=512, max_length=600, max_new=256), 768),
    (dict(max_model_len=4096, eval_new=100), 4096),  # an explicit value is kept
    (dict(max_model_len=100), 100),  # kept even when too small (check.check reports that)
])
def test_model_len(kw: dict, want: int) -> None:
    assert vcheck.model_len(vrecipe(**kw)) == want


# ------------------------------------------------------------------------ fingerprint


def test_vllm_fingerprint_holds_what_changes_samples() -> None:
    fp = generator_spec(vrecipe()).fingerprint()
    assert fp == {"backend": "vllm", "system_prompt": None, "max_prompt_length": 256, "game": None,
                  "vllm": {"dtype": "bf16", "enforce_eager": False, "tensor_parallel": 1,
                           "enable_prefix_caching": True, "max_model_len": None}}  # the recipe's value


@pytest.mark.parametrize("change", [dict(engines=4), dict(gpu_memory_utilization=0.5), dict(kv_cache_gib=3.0),
                                    dict(python="/opt/vllm/bin/python")])
def test_vllm_fingerprint_ignores_engines_memory_and_interpreter(change: dict) -> None:
    assert generator_spec(vrecipe(**change)).fingerprint() == generator_spec(vrecipe()).fingerprint()


@pytest.mark.parametrize("change, key, value", [
    (dict(dtype="fp16"), "dtype", "fp16"), (dict(enforce_eager=True), "enforce_eager", True),
    (dict(tensor_parallel=3), "tensor_parallel", 3),
    (dict(enable_prefix_caching=False), "enable_prefix_caching", False),
    (dict(max_model_len=2048), "max_model_len", 2048),
])
def test_vllm_fingerprint_changes_with_what_changes_samples(change: dict, key: str, value) -> None:
    fp = generator_spec(vrecipe(**change)).fingerprint()
    assert fp["vllm"][key] == value
    assert fp != generator_spec(vrecipe()).fingerprint()


def test_the_derived_model_len_is_not_fingerprinted() -> None:
    """Evaluation's length moves the derived max_model_len; it must not make generate stages stale
    (prompts are cut at trainer.max_prompt_length whatever the engine's context)."""
    assert generator_spec(vrecipe(eval_new=100)).max_model_len == 356
    assert generator_spec(vrecipe(eval_new=100)).fingerprint() == generator_spec(vrecipe()).fingerprint()


def test_an_hf_fingerprint_ignores_the_vllm_keys() -> None:
    want = {"backend": "hf", "system_prompt": None, "max_prompt_length": 256, "game": None, "precision": "fp32"}
    assert generator_spec(vrecipe(backend="hf")).fingerprint() == want
    assert generator_spec(vrecipe(backend="hf", dtype="fp16", enforce_eager=True)).fingerprint() == want


# ------------------------------------------------------------------------ chunk grid


def grid(n: int, k: int, batch: int) -> list[list[int]]:
    return [list(r) for r in chunk_grid(n, k, batch)]


def test_chunk_grid_hand_worked() -> None:
    assert grid(10, 4, 8) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # 8 // 4 = 2 prompts a chunk
    assert grid(10, 2, 8) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # the last chunk short
    assert grid(10, 4, 3) == [[i] for i in range(10)]  # batch < k: one prompt a chunk
    assert grid(3, 1, 16) == [[0, 1, 2]]
    assert grid(0, 4, 8) == []


# ------------------------------------------------------------------------ ChunkLog.peek


def test_peek_reads_whole_lines_and_leaves_the_file_alone(tmp_path: Path) -> None:
    log = ChunkLog(tmp_path / "shard_00.jsonl")
    assert log.peek() == set()  # no file yet
    log.append(0, [{"position": 0}])
    with log.path.open("a") as fh:
        fh.write("garbage, not json\n")
    log.append(2, [{"position": 4}])
    with log.path.open("a") as fh:
        fh.write('{"chunk": 3, "rows": [{"posi')  # a writer mid-line
    before = log.path.read_bytes()
    assert log.peek() == {0, 2}
    assert log.path.read_bytes() == before  # untouched: the writer may be appending right now
    assert log.completed() == {0: [{"position": 0}], 2: [{"position": 4}]}
    assert log.path.read_bytes() != before  # completed() cut the bad lines: what peek must not do
    assert log.peek() == {0, 2}


# ------------------------------------------------------------------------ job folder


def job_example(assignment=None) -> Job:
    engine = EngineSettings(model="/m", dtype="bfloat16", tensor_parallel_size=1, max_model_len=320,
                            enforce_eager=True, enable_prefix_caching=True, enable_chunked_prefill=False,
                            gpu_memory_utilization=0.9, kv_cache_memory_bytes=2 * 2**30)
    sampling = Sampling(n=4, temperature=1.0, top_p=0.9, max_tokens=48, stop_token_ids=[2, 49152])
    chunks = [[(0, 123, [1, 2, 3]), (1, 456, [4])], [(2, 789, [])]]
    return Job(engine, sampling, chunks) if assignment is None else Job(engine, sampling, chunks, assignment)


def test_job_round_trip_and_atomic_write(tmp_path: Path) -> None:
    job = job_example([[0], [1]])
    path = job.write(tmp_path)
    assert path == tmp_path / "job.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json"]  # no job.json.tmp left
    back = Job.read(path)
    assert back == job
    assert back.chunks[0][0] == (0, 123, [1, 2, 3]) and isinstance(back.chunks[0][0], tuple)
    assert Job.read(job_example().write(tmp_path)).assignment == []  # rewritten in place, default kept


# ------------------------------------------------------------------------ placements


@pytest.fixture
def cpu4(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(controller, "_visible_gpus", lambda: [])
    monkeypatch.setattr(controller.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})


def gpus(monkeypatch: pytest.MonkeyPatch, ids: list[str]) -> None:
    monkeypatch.setattr(controller, "_visible_gpus", lambda: list(ids))


def test_cpu_placements_split_the_cores(cpu4) -> None:
    assert controller._placements(2, 1) == [{"VLLM_CPU_OMP_THREADS_BIND": "0,1"}, {"VLLM_CPU_OMP_THREADS_BIND": "2,3"}]
    assert controller._placements(1, 2) == [{"VLLM_CPU_OMP_THREADS_BIND": "0,1|2,3"}]  # one list per TP rank
    assert controller._placements(1, 1) == [{"VLLM_CPU_OMP_THREADS_BIND": "0,1,2,3"}]


def test_gpu_placements_slice_the_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, ["0", "1", "2", "3"])
    assert controller._placements(2, 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert controller._placements(4, 1) == [{"CUDA_VISIBLE_DEVICES": str(i)} for i in range(4)]
    gpus(monkeypatch, ["5", "7"])  # a CUDA_VISIBLE_DEVICES of the caller's: its names, in its order
    assert controller._placements(2, 1) == [{"CUDA_VISIBLE_DEVICES": "5"}, {"CUDA_VISIBLE_DEVICES": "7"}]


# ------------------------------------------------------------------------ failure messages


def failure(tmp_path: Path, log: str | None, code: int = 1, config: VllmConfig = VllmConfig(),
            finished: int = 2, total: int = 5, engine: int = 0) -> str:
    if log is not None:
        worker_log(tmp_path, engine).write_text(log)
    return controller._failure(tmp_path, engine, code, config, finished, total)


def assert_keeps_and_reruns(msg: str, finished: int = 2, total: int = 5) -> None:
    assert f"{finished} of {total} chunks are finished and kept" in msg
    assert "rerun the same command" in msg


def test_failure_unsupported_architecture_points_to_hf(tmp_path: Path) -> None:
    err = ("ValueError: Model architectures ['Phi3SmallForCausalLM'] are not supported for now. "
           "Supported architectures: dict_keys(['LlamaForCausalLM'])")
    msg = failure(tmp_path, f"INFO 01-01 engine starting\n{err}\n{FAILED} {err}\n")
    assert msg.startswith("generation.backend=vllm: engine 0 failed (exit 1): vLLM cannot run this policy's "
                          "architecture")
    assert "generation.backend=hf" in msg
    assert err in msg.splitlines() and f"{FAILED} {err}" in msg.splitlines()
    assert msg.count(f"{FAILED} {err}") == 1  # the worker's error line, quoted once
    assert "INFO 01-01 engine starting" not in msg  # error lines quoted, not the INFO chatter
    assert f"worker log: {worker_log(tmp_path, 0)}" in msg
    assert_keeps_and_reruns(msg)


@pytest.mark.parametrize("line", [
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
    "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization`",
    "ValueError: To serve at least one request with max seq len (4096), 3.0 GiB KV cache is needed",
    "RuntimeError: [enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: you "
    "tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)",  # torch on CPU
])
def test_failure_out_of_memory_names_the_memory_keys(tmp_path: Path, line: str) -> None:
    msg = failure(tmp_path, f"{line}\n", config=VllmConfig(gpu_memory_utilization=0.8, kv_cache_gib=1.5),
                  finished=0, total=3)
    assert "ran out of memory" in msg
    for key in ("generation.vllm.max_model_len", "gpu_memory_utilization (now 0.8", "kv_cache_gib (now 1.5)"):
        assert key in msg
    assert line in msg.splitlines()
    assert_keeps_and_reruns(msg, 0, 3)


def test_failure_of_the_start_up_memory_guard_says_the_gpu_was_not_free(tmp_path: Path) -> None:
    """vLLM refuses to start when less than gpu_memory_utilization of the device is free: another
    process holds it, which lowering the KV cache or the batch would not fix."""
    line = ("ValueError: Free memory on device cuda:0 (12.18/79.19 GiB) on startup is less than desired GPU "
            "memory utilization (0.9, 71.27 GiB). Decrease GPU memory utilization or reduce GPU memory used by "
            "other processes.")
    msg = failure(tmp_path, f"{line}\n", config=VllmConfig(gpu_memory_utilization=0.9), finished=0, total=3)
    assert "the GPU was not free when the engine started" in msg and "nvidia-smi" in msg
    assert "gpu_memory_utilization (now 0.9)" in msg and "ran out of memory" not in msg
    assert line in msg.splitlines()
    assert_keeps_and_reruns(msg, 0, 3)


def test_failure_by_a_signal_names_it(tmp_path: Path) -> None:
    msg = failure(tmp_path, "INFO loading weights\n", code=-9, engine=1, finished=4, total=7)
    assert msg.startswith("generation.backend=vllm: engine 1 failed (exit -9): the worker was killed by signal 9")
    assert "kv_cache_gib" in msg
    assert "INFO loading weights" in msg.splitlines()  # no error lines: the last lines are quoted
    assert_keeps_and_reruns(msg, 4, 7)


def test_failure_quotes_the_last_eight_error_lines_of_the_log(tmp_path: Path) -> None:
    lines = [f"RuntimeError: e{i}" for i in range(12)] + [
        "(EngineCore pid=1) INFO 12-01 13:00:00 [core.py:1] this error is only chatter",
        "(MainProcess pid=1) WARNING 12-01 13:00:00 [base.py:1] ValueError: Tokenizer not available", "done."]
    msg = failure(tmp_path, "\n".join(lines) + "\n")
    quoted = msg.split("--- last lines ---\n")[1].splitlines()[:8]
    assert quoted == [f"RuntimeError: e{i}" for i in range(4, 12)]
    assert "RuntimeError: e3" not in msg and "this error is only chatter" not in msg
    assert "Tokenizer not available" not in msg
    assert "see the worker's log" in msg


def test_failure_cuts_a_very_long_quoted_line(tmp_path: Path) -> None:
    long = "RuntimeError: " + "x" * 1000
    msg = failure(tmp_path, long + "\n")
    assert long[:300] + " …" in msg.splitlines() and long not in msg


def test_failure_without_a_log_still_says_what_to_do(tmp_path: Path) -> None:
    msg = failure(tmp_path, None, finished=0, total=1)
    assert "engine 0 failed (exit 1): see the worker's log" in msg
    assert_keeps_and_reruns(msg, 0, 1)


# A real vLLM log always holds its start-up lines: "Resolved architecture: LlamaForCausalLM" (INFO),
# on CPU "CUDA graph is not supported on CPU, fallback to the eager mode." (WARNING), and once the
# engine is up "GPU KV cache size: N tokens" (INFO): none of them may decide the hint.
STARTUP = ("INFO 05-01 12:00:00 model.py:1] Resolved architecture: LlamaForCausalLM\n"
           "WARNING 05-01 12:00:01 cpu.py:2] CUDA graph is not supported on CPU, fallback to the eager mode.\n")


def test_failure_out_of_memory_after_normal_startup_lines_is_memory(tmp_path: Path) -> None:
    msg = failure(tmp_path, STARTUP + "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    assert "ran out of memory" in msg and "generation.backend=hf" not in msg


def test_failure_unrelated_error_after_engine_start_is_not_memory(tmp_path: Path) -> None:
    log = ("INFO 05-01 12:00:02 kv_cache_utils.py:3] GPU KV cache size: 43,680 tokens\n"
           "RuntimeError: CPU Generator does not use offset\n")
    msg = failure(tmp_path, log)
    assert "ran out of memory" not in msg
    assert "see the worker's log" in msg


# ------------------------------------------------------------------------ logged chunks


def rows(positions, base: int = 0, k: int = 2) -> list[dict]:
    return [{"position": p, "outputs": [[[base + p, s, 7], "stop"] for s in range(k)]} for p in positions]


def test_logged_chunks_keep_only_chunks_on_the_grid(tmp_path: Path) -> None:
    g = chunk_grid(6, 2, 4)  # [0,1] [2,3] [4,5]
    a, b = ChunkLog(shard_log(tmp_path, 0)), ChunkLog(shard_log(tmp_path, 1))
    a.append(0, rows([0, 1]))  # on the grid
    a.append(1, rows([5, 6]))  # chunk 1 of other positions: redone
    a.append(7, rows([14, 15]))  # beyond the grid: ignored
    b.append(2, rows([4, 5]))  # another engine's shard
    b.append(0, rows([0, 1], base=100))  # a second copy: the first shard's is kept
    got = controller._logged_chunks(tmp_path, g)
    assert sorted(got) == [0, 2]
    assert got[0] == rows([0, 1]) and got[2] == rows([4, 5])
    assert controller._logged_chunks(tmp_path, chunk_grid(6, 1, 1)) == {}  # one prompt a chunk: nothing matches


# ------------------------------------------------------------------------ engines


def bare_generator(config: VllmConfig, **attrs) -> VLLMGenerator:
    """A VLLMGenerator without __init__ (which runs the interpreter check and loads a tokenizer)."""
    g = object.__new__(VLLMGenerator)
    g.config = config
    for k, v in attrs.items():
        setattr(g, k, v)
    return g


def test_engines_on_cpu(cpu4) -> None:
    assert bare_generator(VllmConfig())._engines(5) == 1  # null on CPU: one engine
    assert bare_generator(VllmConfig(engines=3))._engines(5) == 3
    assert bare_generator(VllmConfig(engines=3))._engines(2) == 2  # never more than the chunks to run
    assert bare_generator(VllmConfig(engines=3))._engines(0) == 1


def test_engines_on_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, ["0", "1", "2", "3"])
    assert bare_generator(VllmConfig())._engines(9) == 4  # 4 visible / TP 1
    assert bare_generator(VllmConfig(tensor_parallel=2))._engines(9) == 2
    assert bare_generator(VllmConfig(tensor_parallel=2))._engines(1) == 1
    assert bare_generator(VllmConfig(engines=1, tensor_parallel=2))._engines(9) == 1
    with pytest.raises(VllmUnavailable) as info:
        bare_generator(VllmConfig(engines=3, tensor_parallel=2))._engines(9)
    assert str(info.value).startswith("generation.vllm: 3 engine(s) × tensor_parallel 2 need 6 GPUs, 4 are visible")
    assert "lower engines or tensor_parallel" in str(info.value)


def test_engines_null_with_tensor_parallel_above_the_visible_gpus_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus(monkeypatch, ["0", "1"])
    with pytest.raises(VllmUnavailable, match="tensor_parallel"):
        bare_generator(VllmConfig(tensor_parallel=4))._engines(9)


# ------------------------------------------------------------------------ interpreter


def test_a_missing_interpreter_names_the_setup_script(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-venv" / "bin" / "python")
    with pytest.raises(VllmUnavailable) as info:
        controller.check_interpreter(missing)
    msg = str(info.value)
    assert msg.startswith(f"generation.vllm.python: cannot run {missing}")
    assert "bash scripts/vllm_venv.sh" in msg and "generation.backend=hf" in msg


# ------------------------------------------------------------------------ the job the controller writes


class FakeTok:
    def decode(self, tokens, skip_special_tokens=True) -> str:
        return " ".join(map(str, tokens))


class FakeFormat:
    """ChatFormat's surface: one id per character, cut from the left as the trainer cuts."""

    tok = FakeTok()
    end_ids = [7, 8]

    def prompt_ids(self, text: str, max_prompt: int | None = None) -> list[int]:
        ids = [ord(ch) for ch in text]
        return ids[-max_prompt:] if max_prompt is not None and len(ids) > max_prompt else ids


PROMPTS = [Prompt(f"p{i}", "abcde"[: i + 1]) for i in range(6)]  # texts a, ab, abc, ...
TAG = (0, "generate", 1)


def params(batch: int) -> SamplingParams:
    return SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=48, seed=0, batch_size=batch)


def test_job_seeds_by_position_whatever_the_grid(cpu4) -> None:
    g = bare_generator(VllmConfig(), fmt=FakeFormat(), policy="/m", max_model_len=320, max_prompt=3)
    jobs = [g._job(PROMPTS, chunk_grid(6, 2, b), 2, params(b), TAG) for b in (2, 4, 16)]
    assert [len(j.chunks) for j in jobs] == [6, 3, 1]
    flat = [[item for chunk in j.chunks for item in chunk] for j in jobs]
    assert flat[0] == flat[1] == flat[2]
    assert [pos for pos, _, _ in flat[0]] == list(range(6))
    assert [seed for _, seed, _ in flat[0]] == [derive_seed(0, "generate", 1, "prompt", i) for i in range(6)]
    assert len({seed for _, seed, _ in flat[0]}) == 6
    assert [ids for _, _, ids in flat[0][:4]] == [[97], [97, 98], [97, 98, 99], [98, 99, 100]]  # cut to the last 3
    assert jobs[0].sampling == Sampling(n=2, temperature=0.7, top_p=0.9, max_tokens=48, stop_token_ids=[7, 8])


def test_each_request_stops_where_the_trainer_would_cut(cpu4, tmp_path: Path) -> None:
    """SamplingParams.max_length reaches the job; a request's max_tokens is what the trainer's
    max_length leaves after its prompt (as ChatFormat.response_budget), never below 1."""
    g = bare_generator(VllmConfig(), fmt=FakeFormat(), policy="/m", max_model_len=320, max_prompt=3)
    p = SamplingParams(temperature=0.7, top_p=0.9, max_new_tokens=48, seed=0, batch_size=4, max_length=50)
    job = g._job(PROMPTS, chunk_grid(6, 2, 4), 2, p, TAG)
    assert job.sampling.max_length == 50
    assert [job.sampling.budget(len(ids)) for chunk in job.chunks for _, _, ids in chunk] == [48, 48, 47, 47, 47, 47]
    assert Sampling(1, 1.0, 1.0, 48, [7], max_length=10).budget(12) == 1
    assert Sampling(1, 1.0, 1.0, 48, [7]).budget(400) == 48  # no max_length: max_tokens as it was
    assert Job.read(job.write(tmp_path)).sampling == job.sampling  # what the workers read


def test_job_engine_settings_on_cpu_and_gpu(cpu4, monkeypatch: pytest.MonkeyPatch) -> None:
    def engine(config: VllmConfig) -> EngineSettings:
        g = bare_generator(config, fmt=FakeFormat(), policy="/m", max_model_len=320, max_prompt=3)
        return g._job(PROMPTS[:1], chunk_grid(1, 2, 2), 2, params(2), TAG).engine

    cpu = engine(VllmConfig())
    assert cpu == EngineSettings(model="/m", dtype="bfloat16", tensor_parallel_size=1, max_model_len=320,
                                 enforce_eager=False, enable_prefix_caching=True, enable_chunked_prefill=False,
                                 gpu_memory_utilization=0.9, kv_cache_memory_bytes=2 * 2**30,  # CPU: 2 GiB
                                 in_process=True)  # CPU and one TP rank: the engine core in the worker
    assert engine(VllmConfig(kv_cache_gib=0.5, dtype="auto")).kv_cache_memory_bytes == 2**29
    assert engine(VllmConfig(dtype="fp16")).dtype == "float16"
    gpus(monkeypatch, ["0"])
    on_gpu = engine(VllmConfig(tensor_parallel=1))
    assert on_gpu.enable_chunked_prefill is True and on_gpu.kv_cache_memory_bytes is None  # vLLM sizes it
    assert engine(VllmConfig(kv_cache_gib=1.0)).kv_cache_memory_bytes == 2**30


# ------------------------------------------------------------------------ sample() with fake workers


class FakeWorkers:
    """subprocess.Popen for the worker command: runs the engine's assigned chunks at once, in-process
    (outputs [position + base, sample index, end id 7]), or fails with a log line."""

    def __init__(self, fail: int | None = None, base: int = 0):
        self.fail, self.base, self.started, self.stopped = fail, base, [], []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(controller, "subprocess", SimpleNamespace(Popen=self.popen, STDOUT=-2))
        monkeypatch.setattr(controller, "stop_groups", lambda procs: self.stopped.append(len(procs)))

    def popen(self, cmd, stdout, stderr, env, start_new_session):
        state, engine = Path(cmd[-3]), int(cmd[-2])
        job = Job.read(state / "job.json")
        self.started.append({"cmd": cmd, "env": env, "chunks": job.assignment[engine]})
        code = 0
        if engine == self.fail:
            stdout.write("RuntimeError: boom\n")
            code = 1
        else:
            stdout.write(f"{READY} 0.32.0\n")
            for c in job.assignment[engine]:
                positions = [pos for pos, _, _ in job.chunks[c]]
                ChunkLog(shard_log(state, engine)).append(c, rows(positions, self.base, job.sampling.n))
        return SimpleNamespace(pid=None, poll=lambda: code, wait=lambda: code)


def sampler(**v) -> VLLMGenerator:
    return bare_generator(VllmConfig(**v), python="/fake/python", fmt=FakeFormat(), policy="/m", max_model_len=320,
                          max_prompt=3, facts={})


def want(base_of=lambda pos: 0) -> list[list[Sample]]:
    """Every prompt's 2 samples as the fake makes them: text 'position+base index', 3 tokens with the
    end, the sampled ids kept as they came (the end id 7 last)."""
    return [[Sample(f"p{pos}", s, f"{pos + base_of(pos)} {s}", 3, True, [pos + base_of(pos), s, 7]) for s in range(2)]
            for pos in range(6)]


def test_sample_runs_engines_and_merges_in_prompt_order(cpu4, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeWorkers()
    fake.install(monkeypatch)
    g = sampler(engines=2)
    got = g.sample(PROMPTS, 2, params(4), tmp_path / "state", TAG)  # grid [0,1] [2,3] [4,5]
    assert got == want()
    assert [s["chunks"] for s in fake.started] == [[0, 2], [1]]
    assert [s["env"]["VLLM_CPU_OMP_THREADS_BIND"] for s in fake.started] == ["0,1", "2,3"]
    assert fake.started[0]["cmd"][:4] == ["/fake/python", "-m", "sppo_nemo.backends.vllm", str(tmp_path / "state")]
    assert fake.started[0]["env"]["PYTHONPATH"] == str(tmp_path / "state" / "pythonpath")
    assert (tmp_path / "state" / "pythonpath" / "sppo_nemo" / "__init__.py").exists()
    assert fake.stopped == [2]
    assert g.run_facts() == {"vllm": {"engines": 2, "chunks": 3, "chunks_resumed": 0, "vllm_version": "0.32.0"}}


def test_a_failed_engine_keeps_the_finished_chunks_and_a_rerun_resumes(cpu4, monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    state = tmp_path / "state"
    fake = FakeWorkers(fail=1)
    fake.install(monkeypatch)
    with pytest.raises(VllmWorkerFailed) as info:
        sampler(engines=2).sample(PROMPTS, 2, params(4), state, TAG)
    msg = str(info.value)
    assert msg.startswith("generation.backend=vllm: engine 1 failed (exit 1): see the worker's log")
    assert "RuntimeError: boom" in msg.splitlines()
    assert "2 of 3 chunks are finished and kept" in msg  # engine 0 finished chunks 0 and 2
    assert fake.stopped == [2]  # every worker stopped
    again = FakeWorkers(base=100)  # a rerun's outputs are told apart from the kept ones
    again.install(monkeypatch)
    g = sampler(engines=2)
    got = g.sample(PROMPTS, 2, params(4), state, TAG)
    assert [s["chunks"] for s in again.started] == [[1]]  # one chunk to run: one engine
    assert got == want(lambda pos: 100 if pos in (2, 3) else 0)
    assert g.run_facts()["vllm"]["chunks_resumed"] == 2


def test_sample_with_every_chunk_logged_starts_no_engine(cpu4, monkeypatch: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    log = ChunkLog(shard_log(state, 0))
    for c, positions in enumerate(chunk_grid(6, 2, 4)):
        log.append(c, rows(positions))
    fake = FakeWorkers()
    fake.install(monkeypatch)
    seen: list[int] = []
    assert sampler().sample(PROMPTS, 2, params(4), state, TAG, seen.append) == want()
    assert fake.started == [] and not (state / "job.json").exists()
    assert sum(seen) == 12  # 6 prompts × 2 samples


def test_resumed_progress_counts_each_sample_once(cpu4, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    ChunkLog(shard_log(state, 0)).append(1, rows([2, 3]))  # chunk 1 kept from a killed run
    fake = FakeWorkers()
    fake.install(monkeypatch)
    seen: list[int] = []
    assert sampler().sample(PROMPTS, 2, params(4), state, TAG, seen.append) == want()
    assert fake.started[0]["chunks"] == [0, 2]
    assert sum(seen) == 12  # 6 prompts × 2 samples, each counted once (now 4 + 12 = 16)


# ------------------------------------------------------------------ engines over a Slurm allocation

def test_srun_engines_fill_each_node_with_its_gpu_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(controller, "_visible_gpus", lambda: [str(i) for i in range(8)])
    got = controller._srun_placements(8, 2, ["n1", "n2"])
    assert [node for node, _ in got] == ["n1"] * 4 + ["n2"] * 4
    assert [p["CUDA_VISIBLE_DEVICES"] for _, p in got] == ["0,1", "2,3", "4,5", "6,7"] * 2
    monkeypatch.setattr(controller, "_visible_gpus", lambda: [])
    assert controller._srun_placements(2, 1, ["n1", "n2"]) == [("n1", {}), ("n2", {})]  # CPU: one per node


def test_srun_engines_are_steps_overlapping_sppo_runs_own(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(controller, "_visible_gpus", lambda: ["0", "1", "2", "3"])
    monkeypatch.setattr(controller, "allocation_nodes", lambda: ["gpu-a", "gpu-b"])
    g = bare_generator(VllmConfig(launcher="srun", tensor_parallel=2, srun_args=["--container-image=x.sqsh"]),
                       python="/venv/bin/python")
    assert g._engines(todo=100) == 4  # 2 per node × 2 nodes
    cmds = g._commands(tmp_path, 4, 2)
    first, place = cmds[0]
    assert first[:6] == ["srun", "--overlap", "--nodes=1", "--ntasks=1", "--nodelist=gpu-a", "--kill-on-bad-exit=1"]
    assert first[6:8] == ["--container-image=x.sqsh", "python"]  # inside the image: its own python
    assert first[-2:] == ["0", "0"] and place == {"CUDA_VISIBLE_DEVICES": "0,1"}  # engine 0, parent: its step
    assert cmds[3][0][4] == "--nodelist=gpu-b" and cmds[3][1] == {"CUDA_VISIBLE_DEVICES": "2,3"}
    g.config.engines = 5
    with pytest.raises(VllmUnavailable, match="5 engines do not fit the allocation's 4"):
        g._engines(todo=100)


def test_srun_engines_outside_an_allocation_say_so(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    from sppo_nemo.backends.slurm import SlurmUnavailable

    with pytest.raises(SlurmUnavailable, match="generation.vllm.launcher=srun but no Slurm allocation is visible"):
        controller.allocation_nodes()
