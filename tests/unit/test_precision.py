"""precision: auto (sppo_nemo/loading/precision.py, backends/machine.py): the CPU rule with its report
faked both ways, the resolution per key, the run's record kept on a machine that would choose
otherwise, and the default recipe's first command on an AVX2-only CPU computing nothing in bf16."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from sppo_nemo import cli

from sppo_nemo.loading import precision
from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.backends import machine
from sppo_nemo.backends.machine import Machine, cpu_bf16
from sppo_nemo.stages.context import Context
from sppo_nemo.schema.errors import UserError
from sppo_nemo.stages import evaluate, fingerprint, generate

ROOT = Path(__file__).resolve().parents[2]
DEFAULT = ROOT / "recipes" / "smollm2_sppo_3iter.yaml"
AVX2 = Machine(cuda=False, cpu_bf16=False, cpu_reason="no native bf16 on this CPU (torch: AVX2)")
AMX = Machine(cuda=False, cpu_bf16=True, cpu_reason="native bf16 on this CPU (amx_bf16)")
GPU = Machine(cuda=True, cpu_bf16=False, cpu_reason="no native bf16 on this CPU (torch: AVX2)")


def _no_probe(dtype):
    raise AssertionError("a CPU that reports no native bf16 path is not probed")


def test_an_avx2_cpu_is_fp32_without_a_probe():
    native, why = cpu_bf16(flags={"avx2", "fma", "avx512f"}, capability="AVX2", rate=_no_probe)
    assert not native and "AVX2" in why and "avx512_bf16" in why


def test_a_cpu_reporting_native_bf16_is_confirmed_by_the_probe():
    fast = {torch.float32: 140e9, torch.bfloat16: 380e9}
    native, why = cpu_bf16(flags={"avx512_bf16"}, capability="AVX512", rate=fast.__getitem__)
    assert native and "avx512_bf16" in why and "2.7x" in why
    native, _ = cpu_bf16(flags=set(), capability="AMX", rate=fast.__getitem__)  # torch's word alone
    assert native


def test_a_claimed_native_path_that_runs_slower_than_fp32_is_refused():
    slow = {torch.float32: 140e9, torch.bfloat16: 1e9}
    native, why = cpu_bf16(flags={"amx_bf16"}, capability="AMX", rate=slow.__getitem__)
    assert not native and "1.0 GFLOP/s" in why and "140.0" in why


def test_a_native_path_measured_on_a_busy_machine_is_still_native():
    """Both rates fall under load, unevenly: bf16 at 0.57x fp32 was measured on a native CPU busy with
    another run; emulation is ~100x slower, so only a rate under a tenth of fp32's is emulation."""
    busy = {torch.float32: 7.4e9, torch.bfloat16: 4.2e9}
    native, _ = cpu_bf16(flags={"avx512_bf16"}, capability="AVX512", rate=busy.__getitem__)
    assert native
    emulated = {torch.float32: 131e9, torch.bfloat16: 12e9}  # even a 10x-lucky emulation stays under
    assert not cpu_bf16(flags={"avx512_bf16"}, capability="AVX512", rate=emulated.__getitem__)[0]


def test_each_dtype_counts_its_best_of_three_interleaved_rounds():
    seen, rates = [], {torch.float32: iter([9e9, 140e9, 10e9]), torch.bfloat16: iter([380e9, 5e9, 6e9])}

    def rate(dtype):
        seen.append(dtype)
        return next(rates[dtype])

    native, why = cpu_bf16(flags={"avx512_bf16"}, capability="AVX512", rate=rate)
    assert seen == [torch.float32, torch.bfloat16] * 3
    assert native and "2.7x" in why  # 380 / 140, the best of each


def test_the_probe_measures_both_dtypes_on_this_cpu():
    rates = {dtype: machine._rate(dtype) for dtype in (torch.float32, torch.bfloat16)}
    assert all(0 < rate < 1e15 for rate in rates.values())
    m = machine.this_machine()
    assert m.cpu_bf16 == ("native bf16" in m.cpu_reason)


def _recipe(*overrides: str):
    return recipe_mod.load(DEFAULT, list(overrides))


@pytest.mark.parametrize("fake, want", [(AVX2, "fp32"), (AMX, "bf16"), (GPU, "bf16")])
def test_each_key_resolves_by_the_machine(fake, want):
    r = _recipe()
    got = precision.wanted(r, fake.cuda, fake.cpu_bf16)
    assert got == dict.fromkeys(precision.KEYS, want)


def test_megatron_on_gpus_elsewhere_is_bf16_and_the_game_trainer_fp32():
    r = _recipe("trainer.backend=megatron", "trainer.megatron.launcher=srun")
    assert precision.wanted(r, cuda=False, cpu_bf16=False)["trainer.precision"] == "bf16"
    r = _recipe("trainer.backend=megatron")  # torchrun on this CPU machine: the CPU test path
    assert precision.wanted(r, cuda=False, cpu_bf16=False)["trainer.precision"] == "fp32"
    r = _recipe()
    r = dataclasses.replace(r, trainer=dataclasses.replace(r.trainer, backend="game"))  # float64 throughout
    assert precision.wanted(r, cuda=True, cpu_bf16=True)["trainer.precision"] == "fp32"


def test_the_kl_follows_an_explicit_generation_precision():
    r = _recipe("generation.precision=fp32")
    assert precision.wanted(r, cuda=True, cpu_bf16=True)["evaluation.kl_precision"] == "fp32"


def test_explicit_values_are_never_changed(tmp_path):
    r = _recipe("generation.precision=fp32", "trainer.precision=bf16", "evaluation.kl_precision=fp32")
    out, lines = precision.resolve(r, tmp_path, cuda=False, cpu_bf16=True, why="", record=True)
    assert out is r and lines == [] and not (tmp_path / precision.RECORD).exists()


def test_the_first_command_records_and_a_resume_elsewhere_keeps_it(tmp_path):
    r = _recipe()
    out, lines = precision.resolve(r, tmp_path, cuda=False, cpu_bf16=False, why="AVX2 only", record=False)
    assert not (tmp_path / precision.RECORD).exists()  # a dry run writes nothing
    assert out.generation.precision == out.trainer.precision == out.evaluation.kl_precision == "fp32"
    assert "generation.precision=fp32" in lines[0] and "AVX2 only" in lines[0]
    precision.resolve(r, tmp_path, cuda=False, cpu_bf16=False, why="AVX2 only", record=True)
    recorded = json.loads((tmp_path / precision.RECORD).read_text())
    assert {k: recorded[k] for k in precision.KEYS} == dict.fromkeys(precision.KEYS, "fp32")
    # resumed on a machine with native bf16: the run keeps fp32 and says so
    out, lines = precision.resolve(r, tmp_path, cuda=False, cpu_bf16=True, why="amx", record=True)
    assert out.generation.precision == out.trainer.precision == out.evaluation.kl_precision == "fp32"
    assert "as this run started" in lines[0]
    assert "would choose" in lines[1] and "generation.precision=bf16" in lines[1] and "keeps" in lines[1]


def test_a_broken_record_is_a_message_naming_the_file(tmp_path):
    (tmp_path / precision.RECORD).write_text("{not json")
    with pytest.raises(UserError) as exc:
        precision.resolve(_recipe(), tmp_path, cuda=False, cpu_bf16=False, why="", record=False)
    assert precision.RECORD in str(exc.value) and "Delete it" in str(exc.value)


def _context(tmp_path, fake: Machine, monkeypatch, *overrides) -> Context:
    monkeypatch.setattr(machine, "this_machine", lambda: fake)
    r = _recipe(f"output_dir={tmp_path}", *overrides)
    return Context(r, tmp_path / r.name, progress=False)


def _fingerprints(ctx: Context) -> dict:
    return {m.NAME: fingerprint(m.inputs(ctx, t)) for t, m in ((1, generate), (0, evaluate))}


def test_stages_fingerprint_the_resolved_values(tmp_path, monkeypatch):
    auto = _context(tmp_path, AVX2, monkeypatch)
    explicit = _context(tmp_path, AVX2, monkeypatch, "generation.precision=fp32", "trainer.precision=fp32",
                        "evaluation.kl_precision=fp32")
    assert _fingerprints(auto) == _fingerprints(explicit)
    assert "auto" not in json.dumps(_fingerprints(auto))
    assert auto.recipe.trainer.precision == "fp32" and auto.requested.trainer.precision == "auto"
    amx = _context(tmp_path, AMX, monkeypatch)
    assert _fingerprints(amx) != _fingerprints(auto)  # bf16 and fp32 runs are different runs


def test_the_run_records_its_choice_and_its_resolved_recipe_holds_it(tmp_path, monkeypatch):
    ctx = _context(tmp_path, AMX, monkeypatch)
    ctx.record_precision()  # what the runner does before the first stage
    recorded = json.loads((ctx.run_dir / precision.RECORD).read_text())
    assert {k: recorded[k] for k in precision.KEYS} == dict.fromkeys(precision.KEYS, "bf16")
    assert "amx_bf16" in recorded["machine"]
    assert "precision: auto" not in recipe_mod.to_yaml(ctx.recipe) and "precision: bf16" in recipe_mod.to_yaml(ctx.recipe)
    assert "amx_bf16" in precision.recorded_note(ctx.run_dir)
    resumed = _context(tmp_path, AVX2, monkeypatch)  # the same run directory on an AVX2 machine
    assert resumed.recipe.generation.precision == "bf16" and "would choose" in resumed.precision_lines[1]


def test_the_default_command_on_an_avx2_cpu_prints_and_runs_fp32(tmp_path, monkeypatch, capsys):
    """README's first command on an AVX2-only CPU: the printed line says fp32, and the recipe every
    stage reads holds no bf16 (checked on the dry run, which resolves as the run does)."""
    monkeypatch.setattr(machine, "this_machine", lambda: AVX2)
    assert cli.main([str(DEFAULT), f"output_dir={tmp_path}", "--dry-run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert ("precision: auto -> generation.precision=fp32, trainer.precision=fp32, "
            "evaluation.kl_precision=fp32") in out
    assert "todo" in out and "STALE" not in out
    assert cli.main([str(DEFAULT), "--validate"]) == 0
    err = capsys.readouterr().err
    assert "precision: auto resolves, on this machine, to generation.precision=fp32" in err
