"""Nothing silently wrong (issue 12), through the real `sppo-run` on the tiny model: finished stages
whose files changed are reported by name and never reused, π_1 is identified by its content, every
run-time fault ends in one message and its exit code without a traceback, and nothing finished is
lost: after the fault is fixed, the same command finishes with the artifacts of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sppo_nemo.formats.artifacts import digest_files

from tests.helpers import TINY_RECIPE, sppo_run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T1 = ("T=1", "K=4", "data.split_size=24")  # one small iteration: iter_00/evaluate and the stages of iter_01


def run(tiny_model, out: Path, *args, **kwargs) -> subprocess.CompletedProcess:
    return sppo_run(tiny_model, TINY_RECIPE, f"output_dir={out}", *T1, *args, check=False, **kwargs)


def failed_cleanly(proc: subprocess.CompletedProcess, rc: int, *words: str) -> str:
    assert proc.returncode == rc, f"exit {proc.returncode}, wanted {rc}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, f"{w!r} not in:\n{proc.stderr}"
    return proc.stderr


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    proc = run(tiny_model, out)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture
def copy_of(finished, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)  # copy2 keeps mtimes, as `cp -a` would
    return out


def stage_digests(run_dir: Path) -> dict:
    return {s: digest_files(run_dir / s) for s in ("iter_00/evaluate", "iter_01/generate", "iter_01/annotate",
                                                    "iter_01/build", "iter_01/train", "iter_01/evaluate")}


# ------------------------------------------------------------ committed artifacts are verified

def _truncate(p: Path) -> None:
    f = p / "iter_01/generate/responses.jsonl"
    f.write_text(f.read_text().splitlines()[0] + "\n")


def _edit_rows(p: Path) -> None:
    f = p / "iter_01/build/rows.jsonl"
    f.write_text(f.read_text().replace('"win_prob": 0.', '"win_prob": 0.9', 1))


def _delete_weights(p: Path) -> None:
    (p / "iter_01/train/policy/model.safetensors").unlink()


@pytest.mark.parametrize("tamper, named", [(_truncate, "generate/responses.jsonl"), (_edit_rows, "build/rows.jsonl"),
                                           (_delete_weights, "train/policy/model.safetensors")],
                         ids=["truncated", "edited", "deleted"])
def test_a_tampered_finished_stage_is_reported_by_name_and_never_reused(tiny_model, copy_of, tamper, named):
    tamper(copy_of / "tiny_sppo")
    dry = run(tiny_model, copy_of, "--dry-run")
    assert dry.returncode == 0 and "CHANGED" in dry.stdout and named in dry.stdout, dry.stdout
    failed_cleanly(run(tiny_model, copy_of), 1, named, "--restart-from")


def test_full_verification_catches_a_same_size_edit_with_the_old_mtime(tiny_model, copy_of):
    f = copy_of / "tiny_sppo/iter_01/build/rows.jsonl"
    st = f.stat()
    text = f.read_text()
    i = text.index('"win_prob": 0.') + len('"win_prob": 0.')
    f.write_text(text[:i] + ("1" if text[i] != "1" else "2") + text[i + 1:])  # one digit: same size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime
    assert run(tiny_model, copy_of).returncode == 0  # fast mode trusts an unchanged size and mtime
    failed_cleanly(run(tiny_model, copy_of, "--verify-hashes"), 1, "build/rows.jsonl", "content changed")


def test_the_base_model_is_identified_by_its_content(tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    out = tmp_path / "out"
    assert run(tiny_model, out, f"policy.model={model}", "evaluation.enabled=false").returncode == 0
    weights = load_file(str(model / "model.safetensors"))
    save_file({k: v * 1.01 for k, v in weights.items()}, str(model / "model.safetensors"))  # replaced in place
    err = failed_cleanly(run(tiny_model, out, f"policy.model={model}", "evaluation.enabled=false"), 3,
                         "iter_01/generate", "policy: was 'model:")
    assert f"    {model / 'model.safetensors'}: its content changed since this stage was made" in err.splitlines(), err


def test_a_garbage_manifest_is_a_message_for_the_run_and_the_dry_run(tiny_model, copy_of):
    (copy_of / "tiny_sppo/iter_01/annotate/manifest.json").write_text("{garbage")
    dry = run(tiny_model, copy_of, "--dry-run")
    assert dry.returncode == 0 and "Traceback" not in dry.stderr
    assert "iter_01/annotate  CHANGED" in dry.stdout and "manifest.json cannot be read" in dry.stdout
    failed_cleanly(run(tiny_model, copy_of), 1, "annotate/manifest.json cannot be read", "--restart-from iter_01/annotate")


# ------------------------------------------------------------ leftovers of crashes are tidied

def test_leftovers_of_a_crash_are_cleaned_and_reruns_finish(tiny_model, copy_of, finished):
    run_dir = copy_of / "tiny_sppo"
    (run_dir / "iter_01/train.removing").mkdir()  # a kill in the middle of --restart-from
    (run_dir / "iter_01/train.removing/half").write_text("x")
    (run_dir / "iter_01/evaluate.partial").write_text("junk")  # a file where a partial folder belongs
    assert run(tiny_model, copy_of).returncode == 0
    assert not (run_dir / "iter_01/train.removing").exists() and not (run_dir / "iter_01/evaluate.partial").exists()
    assert stage_digests(run_dir) == stage_digests(finished / "tiny_sppo")


def test_a_partial_that_is_a_file_does_not_stop_a_fresh_run(tiny_model, finished, tmp_path):
    (tmp_path / "tiny_sppo/iter_01").mkdir(parents=True)
    (tmp_path / "tiny_sppo/iter_01/generate.partial").write_text("junk")
    assert run(tiny_model, tmp_path).returncode == 0
    assert stage_digests(tmp_path / "tiny_sppo") == stage_digests(finished / "tiny_sppo")


# ------------------------------------------------------------ run-time faults: one message, nothing lost

def _mount_tmpfs(path: Path, size_kb: int, ro: bool = False) -> None:
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kb}k" + (",ro" if ro else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs (mount said: {proc.stderr.strip()})")


@pytest.fixture
def tmpfs(tmp_path):
    mounted = []

    def make(size_kb: int, ro: bool = False) -> Path:
        path = tmp_path / f"tmpfs{len(mounted)}"
        _mount_tmpfs(path, size_kb, ro)
        mounted.append(path)
        return path

    yield make
    for p in mounted:
        subprocess.run(["umount", str(p)], capture_output=True)


@pytest.mark.parametrize("size_kb", [96, 200, 320], ids=["before-train", "in-the-checkpoint", "after-train"])
def test_a_full_disk_ends_in_a_message_and_the_rerun_resumes(tiny_model, finished, tmpfs, size_kb):
    out = tmpfs(size_kb)
    failed_cleanly(run(tiny_model, out), 1, "the disk is full", "rerun the same command")
    subprocess.run(["mount", "-o", f"remount,size={64 * 1024}k", str(out)], check=True)
    assert run(tiny_model, out).returncode == 0
    assert stage_digests(out / "tiny_sppo") == stage_digests(finished / "tiny_sppo")


def test_a_read_only_output_directory_is_a_message(tiny_model, tmpfs):
    failed_cleanly(run(tiny_model, tmpfs(64, ro=True)), 1, "cannot write", "output_dir")


def test_an_output_dir_that_is_a_file_is_a_message(tiny_model, tmp_path):
    (tmp_path / "file").write_text("x")
    failed_cleanly(run(tiny_model, tmp_path / "file"), 1, "a file stands where the run needs a directory")


@pytest.mark.parametrize("damage, words", [
    (lambda m: [f.unlink() for f in m.glob("tokenizer*")], ("not a complete checkpoint", "tokenizer files")),
    (lambda m: (m / "model.safetensors").unlink(), ("not a complete checkpoint", "weights")),
    (lambda m: (m / "model.safetensors").write_bytes((m / "model.safetensors").read_bytes()[:1000]),
     ("cannot load the causal LM",)),
], ids=["no-tokenizer", "no-weights", "corrupt-weights"])
def test_a_broken_policy_folder_is_a_message(tiny_model, tmp_path, damage, words):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    damage(model)
    failed_cleanly(run(tiny_model, tmp_path / "out", f"policy.model={model}"), 1, *words)


def test_a_diverging_loss_stops_training_naming_the_step(tiny_model, tmp_path):
    err = failed_cleanly(run(tiny_model, tmp_path, "trainer.lr=1e30"), 1, "training diverged at optimizer step")
    assert not (tmp_path / "tiny_sppo/iter_01/train").exists() and (tmp_path / "tiny_sppo/iter_01/build/_DONE").exists()
    assert "nothing of this stage was committed" in err


def test_a_single_diverging_step_is_refused_like_a_diverging_run(tiny_model, tmp_path):
    """One optimizer step (16 rows, one micro-batch) at lr 1e30: no later step sees its loss, so it
    used to commit a policy with NaN log-probs and exit 0; the probe after training now stops it."""
    err = failed_cleanly(run(tiny_model, tmp_path, "K=2", "data.split_size=8", "trainer.batch_size=16",
                             "trainer.epochs=1", "trainer.lr=1e30", "evaluation.enabled=false"), 1,
                         "training diverged at optimizer step 0 of 1: after its update the loss on the 16 fixed "
                         "probe rows is nan", "nothing of this stage was committed. Lower trainer.lr")
    assert not (tmp_path / "tiny_sppo/iter_01/train").exists() and (tmp_path / "tiny_sppo/iter_01/build/_DONE").exists()


# ------------------------------------------------------------ bad data

def test_a_huge_prompt_is_cut_from_the_left_and_counted(tiny_model, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"What is {i} plus {i}?"} for i in range(6)]
    rows[3]["prompt"] = "word " * 200_000 + "What is the end?"  # about 1 MB
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run(tiny_model, tmp_path / "out", f"data.prompts={prompts}", "data.eval_size=2", "data.split_size=4",
               "evaluation.enabled=false", "K=2", timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "out/tiny_sppo/iter_01/generate/manifest.json").read_text())["result"]
    assert result["prompts_cut"] == 1 and result["prompts"] == 4


def test_the_pairrm_judge_without_weights_or_hub_is_a_message(tiny_model, tmp_path):
    failed_cleanly(run(tiny_model, tmp_path, "judge.backend=pairrm", "evaluation.enabled=false"), 1,
                   "judge.model", "huggingface-cli download llm-blender/PairRM-hf")
    assert (tmp_path / "tiny_sppo/iter_01/generate/_DONE").is_file()  # what was computed is kept


@pytest.mark.parametrize("flag", ["--stage", "--restart-from"])
def test_an_unknown_stage_label_is_a_usage_error(tiny_model, tmp_path, flag):
    failed_cleanly(run(tiny_model, tmp_path, flag, "iter_09/train"), 2, "unknown stage 'iter_09/train'",
                   "iter_01/generate")
