"""sppo_nemo/run/preflight.py: engines this machine cannot run are refused before the first stage.

The machine is faked through the module's probes (GPUs visible, vllm in an interpreter, the
test-only megatron CPU patches); the stages that will run come from a run directory with some
stages marked finished.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from sppo_nemo.run import preflight
from sppo_nemo.formats.artifacts import Stage
from sppo_nemo.schema.config import MegatronConfig, Recipe
from sppo_nemo.run.preflight import EnginesUnavailable, problems, refuse_unrunnable, stages_to_run
from cpu_patches.megatron_cpu import worker_env

pytestmark = pytest.mark.unit

TRAIN = [(1, "train"), (2, "train")]
SAMPLING = [(0, "evaluate"), (1, "generate"), (1, "evaluate")]


def recipe(T: int = 2, **sections) -> Recipe:
    r = Recipe(name="pf", T=T)
    for dotted, value in sections.items():
        *path, key = dotted.split("__")
        obj = r
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, key, value)
    return r


def megatron(**layout) -> Recipe:
    r = recipe(trainer__backend="megatron")
    r.trainer.megatron = MegatronConfig(**layout)
    return r


def vllm(**keys) -> Recipe:
    r = recipe(generation__backend="vllm")
    for k, v in keys.items():
        setattr(r.generation.vllm, k, v)
    return r


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch):
    """A machine with no GPU, vllm everywhere, no CPU patches; change its fields in the test.
    ``asked`` counts the probes' calls."""
    m = SimpleNamespace(gpus=0, vllm=None, patched=False, missing=set(), asked=[])

    def probe(name, value):
        def f(*args):
            m.asked.append((name, *args))
            return getattr(m, value)
        return f

    monkeypatch.setattr(preflight, "gpu_count", probe("gpus", "gpus"))
    monkeypatch.setattr(preflight, "vllm_problem", probe("vllm", "vllm"))
    monkeypatch.setattr(preflight, "megatron_cpu_patched", probe("patched", "patched"))

    def installed(module):
        m.asked.append(("installed", module))
        return module not in m.missing

    monkeypatch.setattr(preflight, "installed", installed)

    def installed_in(python, module):
        m.asked.append(("installed_in", python, module))
        return module not in m.missing_there

    monkeypatch.setattr(preflight, "installed_in", installed_in)
    m.missing_there = set()  # modules the vLLM interpreter lacks
    return m


# ------------------------------------------------------------------------ megatron


def test_megatron_without_cuda_is_refused_naming_the_stages_and_the_fix(machine) -> None:
    (p,) = problems(megatron(), TRAIN)
    assert p.startswith("iter_01/train, iter_02/train: trainer.backend=megatron needs CUDA GPUs")
    assert "set trainer.backend=torch to train here" in p and "= 1 on this machine" in p


def test_megatron_on_cpu_with_the_test_patches_passes(machine) -> None:
    machine.patched = True
    assert problems(megatron(tensor_parallel=2), TRAIN) == []


@pytest.mark.parametrize("gpus, ok", [(1, False), (7, False), (8, True), (16, True)])
def test_megatron_needs_tp_pp_dp_gpus_here(machine, gpus: int, ok: bool) -> None:
    machine.gpus = gpus
    got = problems(megatron(tensor_parallel=2, data_parallel=4), TRAIN)
    if ok:
        assert got == []
    else:
        assert len(got) == 1
        assert f"TP·PP·DP = 2·1·4 = 8 ranks, one GPU each, but {gpus} GPU(s) are visible" in got[0]
        assert "Lower trainer.megatron.data_parallel" in got[0]


def test_megatron_ranks_on_a_slurm_allocation_are_not_counted_here(machine) -> None:
    r = megatron(tensor_parallel=2, data_parallel=4, launcher="srun", nnodes=2, nproc_per_node=4)
    assert problems(r, TRAIN) == []
    assert machine.asked == []  # nothing on this machine was even asked


# ------------------------------------------------------------------------ vLLM


def test_no_vllm_in_the_interpreter_is_refused_with_the_controllers_message(machine) -> None:
    machine.vllm = "generation.backend=vllm: /x/python has no vllm; build the vLLM environment with ..."
    (p,) = problems(vllm(python="/x/python"), SAMPLING)
    assert p == "iter_00/evaluate, iter_01/generate, iter_01/evaluate: " + machine.vllm
    assert ("vllm", "/x/python") in machine.asked


def test_null_python_asks_this_interpreter(machine) -> None:
    import sys

    problems(vllm(), SAMPLING)
    assert ("vllm", sys.executable) in machine.asked


@pytest.mark.parametrize("gpus, keys, ok", [
    (1, dict(engines=2), False),  # the old smollm2_sppo_3iter_vllm.yaml on one GPU
    (8, dict(engines=2), True),
    (1, dict(), True),  # engines null: one per visible GPU
    (1, dict(tensor_parallel=2), False),  # one engine of TP 2 does not fit one GPU
    (4, dict(engines=2, tensor_parallel=2), True),
    (0, dict(engines=2), True),  # no GPU: vLLM's CPU build shares the cores
    (1, dict(engines=8, launcher="srun"), True),  # engines on the allocation's nodes: not counted here
])
def test_vllm_engines_must_fit_the_visible_gpus(machine, gpus: int, keys: dict, ok: bool) -> None:
    machine.gpus = gpus
    got = problems(vllm(**keys), SAMPLING)
    assert (got == []) == ok, got
    if not ok:
        assert "need" in got[0] and f"{gpus} are visible" in got[0] and "engines: null" in got[0]


def test_every_problem_at_once_in_one_message(machine, tmp_path: Path) -> None:
    machine.vllm = "generation.backend=vllm: /x/python has no vllm; build it"
    r = megatron()
    r.generation.backend = "vllm"
    with pytest.raises(EnginesUnavailable) as info:
        refuse_unrunnable(ctx_for(r, tmp_path))
    msg = str(info.value)
    assert info.value.exit_code == 1
    assert msg.startswith("this machine cannot run the recipe's engines; nothing was run:\n")
    assert "trainer.backend=megatron" in msg and "has no vllm" in msg
    assert msg.count("\n  - ") == 2


def test_torch_and_hf_probe_nothing(machine, tmp_path: Path) -> None:
    refuse_unrunnable(ctx_for(recipe(), tmp_path))
    assert machine.asked == []


def test_lm_eval_missing_is_refused_for_the_evaluate_stages_only(machine) -> None:
    machine.missing = {"lm_eval"}
    r = recipe(evaluation__lm_eval__enabled=True)
    (p,) = problems(r, [(0, "evaluate"), (1, "generate"), (1, "evaluate")])
    assert p.startswith("iter_00/evaluate, iter_01/evaluate: evaluation.lm_eval.enabled=true needs lm-eval")
    assert "pip install -e '.[evals]'" in p
    machine.asked.clear()
    assert problems(r, [(1, "generate"), (1, "train")]) == []
    assert problems(recipe(), [(0, "evaluate")]) == []
    assert machine.asked == []  # no evaluate stage, or lm-eval off: not even asked


def test_lm_eval_on_vllm_needs_vllm_and_lm_eval_in_the_vllm_interpreter_not_here(machine) -> None:
    machine.missing = {"lm_eval"}  # not here: the vllm backend does not need it here
    r = recipe(evaluation__lm_eval__enabled=True, evaluation__lm_eval__backend="vllm",
               generation__vllm__python="/v/bin/python")
    assert problems(r, [(1, "evaluate")]) == []
    assert ("installed_in", "/v/bin/python", "lm_eval") in machine.asked
    machine.missing_there = {"lm_eval"}
    (p,) = problems(r, [(1, "evaluate")])
    assert p.startswith("iter_01/evaluate: evaluation.lm_eval.backend=vllm runs lm-eval beside vLLM: /v/bin/python "
                        "cannot import lm_eval") and "scripts/vllm_venv.sh" in p
    machine.vllm = "generation.backend=vllm: /v/bin/python has no vllm; build it"
    (p,) = problems(r, [(1, "evaluate")])
    assert p.endswith(machine.vllm)


def test_alpaca_eval_needs_scikit_learn_and_a_local_judge_needs_vllm(machine) -> None:
    machine.missing, machine.vllm = {"sklearn"}, "generation.backend=vllm: /x/python has no vllm; build it"
    r = recipe(evaluation__alpaca_eval__enabled=True, evaluation__alpaca_eval__local_model="/judge")
    sk, vl = problems(r, [(1, "evaluate")])
    assert sk.startswith("iter_01/evaluate: evaluation.alpaca_eval.enabled=true needs scikit-learn")
    assert vl == "iter_01/evaluate: evaluation.alpaca_eval.local_model is served by vLLM: " + machine.vllm
    r.evaluation.alpaca_eval.local_model, r.evaluation.alpaca_eval.endpoint = None, "https://api.example.com/v1"
    assert problems(r, [(1, "evaluate")]) == [sk]  # an endpoint needs no vLLM here


# ------------------------------------------------------------------------ which stages will run


def ctx_for(r: Recipe, run_dir: Path, done: tuple[str, ...] = ()) -> SimpleNamespace:
    """Context's surface the preflight reads, with the ``done`` stages (labels) finished."""
    for label in done:
        (run_dir / label).mkdir(parents=True, exist_ok=True)
        (run_dir / label / "_DONE").touch()
    return SimpleNamespace(recipe=r, stage=lambda t, name: Stage(run_dir / f"iter_{t:02d}" / name))


def test_finished_stages_do_not_run(tmp_path: Path) -> None:
    r = recipe(T=2)
    everything = stages_to_run(ctx_for(r, tmp_path))
    assert everything[:2] == [(0, "evaluate"), (1, "generate")] and len(everything) == 11
    ctx = ctx_for(r, tmp_path, ("iter_00/evaluate", "iter_01/generate", "iter_01/annotate"))
    assert stages_to_run(ctx)[:2] == [(1, "build"), (1, "train")] and len(stages_to_run(ctx)) == 8
    assert stages_to_run(ctx, only=(1, "annotate")) == []  # done: --stage skips it
    assert stages_to_run(ctx, only=(2, "train")) == [(2, "train")]
    assert stages_to_run(ctx, restart_from=(1, "generate"))[0] == (1, "generate")  # removed, then run again


def test_a_run_whose_remaining_stages_need_no_megatron_is_not_refused(machine, tmp_path: Path) -> None:
    r = megatron()
    r.T = 1
    ctx = ctx_for(r, tmp_path, ("iter_00/evaluate", "iter_01/generate", "iter_01/annotate", "iter_01/build",
                                "iter_01/train"))
    refuse_unrunnable(ctx)  # iter_01/evaluate is left: the hf generator and the offline judge
    assert machine.asked == []
    with pytest.raises(EnginesUnavailable, match="iter_01/train: trainer.backend=megatron"):
        refuse_unrunnable(ctx, restart_from=(1, "train"))


def test_stage_checks_only_that_stage(machine, tmp_path: Path) -> None:
    ctx = ctx_for(megatron(), tmp_path)
    refuse_unrunnable(ctx, only=(1, "generate"))
    with pytest.raises(EnginesUnavailable, match="^this machine.*\n  - iter_02/train: "):
        refuse_unrunnable(ctx, only=(2, "train"))


# ------------------------------------------------------------------------ the probes themselves


def test_the_test_patches_are_recognised_by_what_the_tests_put_on_pythonpath(monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", worker_env()["PYTHONPATH"])
    assert preflight.megatron_cpu_patched()
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parents[1]))
    assert not preflight.megatron_cpu_patched()
    monkeypatch.delenv("PYTHONPATH")
    assert not preflight.megatron_cpu_patched()


def test_counting_gpus_initialises_no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CUDA build of torch whose NVML answers 4: counted without cudaGetDeviceCount (cuInit) and
    without torch's lazy CUDA initialisation."""
    import torch

    def no(*args):
        raise AssertionError("CUDA was initialised")

    monkeypatch.setattr(torch.cuda, "_is_compiled", lambda: True)
    monkeypatch.setattr(torch.cuda, "_device_count_nvml", lambda: 4)
    monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", no, raising=False)
    monkeypatch.setattr(torch.cuda, "_lazy_init", no)
    assert preflight.gpu_count() == 4
    assert not torch.cuda.is_initialized()


def test_a_missing_interpreter_is_named_with_the_setup_script(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-venv" / "bin" / "python")
    got = preflight.vllm_problem(missing)
    assert got.startswith(f"generation.vllm.python: cannot run {missing}") and "bash scripts/vllm_venv.sh" in got


def test_the_dockerfiles_vllm_recipe_fits_one_gpu_fills_eight_and_uses_cuda_graphs(machine) -> None:
    """recipes/smollm2_sppo_3iter_vllm.yaml (what the Dockerfile's header runs) once asked for 2 eager
    engines: refused on one GPU, 6 of 8 GPUs idle, no CUDA graphs."""
    from sppo_nemo.loading import recipe as recipe_mod
    from sppo_nemo.backends.vllm.check import local_engines
    from tests.helpers import RECIPES, ROOT

    path = RECIPES / "smollm2_sppo_3iter_vllm.yaml"
    assert f"sppo-run recipes/{path.name}" in (ROOT / "Dockerfile").read_text()
    r = recipe_mod.load(path, check_data=False)
    assert r.generation.vllm.enforce_eager is False
    for gpus in (1, 2, 8):
        machine.gpus = gpus
        assert problems(r, SAMPLING) == []
        assert local_engines(r.generation.vllm, gpus) == gpus
