"""Prompts from the Hugging Face hub as users have them (UltraFeedback), read with the real
``datasets`` library and no hub: a hub dataset "in the cache" is the layout a download leaves in
HF_DATASETS_CACHE, written here by datasets' own Parquet builder; ``hf:`` followed by a local folder
of data files reads it as load_dataset reads a dataset repository. Offline (HF_HUB_OFFLINE, which
tests/conftest.py sets) an uncached dataset is a DataError naming the download command, --validate's
check passes with a note, and the dry run still lists the plan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sppo_nemo.formats import data
from sppo_nemo.loading import recipe as recipe_mod
from sppo_nemo.schema.config import DataConfig
from sppo_nemo.stages.context import Context
from sppo_nemo.run.runner import status

pytestmark = pytest.mark.unit

datasets = pytest.importorskip("datasets", reason="hub prompts are read with the datasets package: "
                                                  "pip install -e '.[test]' (or '.[hub]')")

ROOT = Path(__file__).resolve().parents[2]
BINARIZED = "HuggingFaceH4/ultrafeedback_binarized"
OPENBMB = "openbmb/UltraFeedback"


def binarized_rows(n: int, split: str) -> dict:
    """ultrafeedback_binarized's columns: prompt, prompt_id (a hash of the prompt), chosen / rejected /
    messages as chat turns, and the two scores."""
    turns = lambda i, who: [{"content": f"{split} question {i}", "role": "user"},  # noqa: E731
                            {"content": f"{who} answer {i}", "role": "assistant"}]
    return {"prompt": [f"{split} question {i}" for i in range(n)],
            "prompt_id": [f"{split}-{i:04x}" for i in range(n)],
            "chosen": [turns(i, "good") for i in range(n)], "rejected": [turns(i, "bad") for i in range(n)],
            "messages": [turns(i, "good") for i in range(n)],
            "score_chosen": [8.0] * n, "score_rejected": [3.5] * n}


def openbmb_rows(n: int) -> dict:
    """openbmb/UltraFeedback's columns: the instruction, where it came from, four completions; no id."""
    return {"source": ["evol_instruct"] * n, "instruction": [f"instruction {i}" for i in range(n)],
            "models": [["a", "b"]] * n,
            "completions": [[{"model": "a", "response": f"r{i}", "overall_score": 7.5}] for i in range(n)],
            "correct_answers": [["none"]] * n, "incorrect_answers": [["none"]] * n}


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty datasets cache, offline: what HF_DATASETS_CACHE=<dir> and HF_HUB_OFFLINE=1 set when
    datasets is imported (it reads them then; the subprocess test below sets the variables themselves)."""
    path = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", path)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    return path


def put_in_cache(cache: Path, repo_id: str, splits: dict[str, dict], tmp_path: Path) -> None:
    """Leave ``repo_id`` in the cache as ``datasets.load_dataset(repo_id)`` does after a download:
    <cache>/<owner>___<name>/<config>/<version>/<hash>/, made by the Parquet builder the hub uses."""
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    owner, name = repo_id.split("/")
    files = {}
    for split, columns in splits.items():
        f = tmp_path / "download" / f"{split}-00000-of-00001.parquet"
        f.parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_dict(columns).to_parquet(str(f))
        files[split] = [str(f)]
    snake = camelcase_to_snakecase(name)
    builder = Parquet(dataset_name=snake, config_name="default", data_files=files, hash="0123abcd",
                      cache_dir=str(tmp_path / "scratch"))
    builder.download_and_prepare(output_dir=str(cache / f"{owner}___{snake}" / "default" / "0.0.0" / "0123abcd"))


def dataset_folder(path: Path, configs: dict[str, dict[str, dict]]) -> Path:
    """A dataset repository as the hub holds it: data/<config>/<split>-*.parquet and a README whose
    YAML names the configurations (load_dataset's ``name``, data.subset)."""
    card = ["---", "configs:"]
    for config, splits in configs.items():
        card += [f"- config_name: {config}", "  data_files:"]
        for split, columns in splits.items():
            f = path / "data" / config / f"{split}-00000-of-00001.parquet"
            f.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(columns).to_parquet(str(f))
            card += [f"  - split: {split}", f"    path: data/{config}/{split}-*.parquet"]
    (path / "README.md").write_text("\n".join(card + ["---", ""]))
    return path


# ----------------------------------------------------------------------- the two UltraFeedback shapes


def test_ultrafeedback_binarized_from_the_cache_offline(cache, tmp_path):
    put_in_cache(cache, BINARIZED, {"train_prefs": binarized_rows(12, "train"),
                                    "test_prefs": binarized_rows(3, "test")}, tmp_path)
    cfg = DataConfig(prompts=f"hf:{BINARIZED}", split="train_prefs", prompt_field="prompt",
                     id_field="prompt_id", split_size=4, eval_size=2)
    prompts = data.load_prompts(cfg)
    assert [(p.id, p.text) for p in prompts[:2]] == [("train-0000", "train question 0"),
                                                      ("train-0001", "train question 1")]
    assert len(prompts) == 12 and all(p.reference is None and p.answer is None for p in prompts)
    splits = data.make_splits(prompts, 2, 4, 2)
    assert [p.id for p in splits.eval] == ["train-0000", "train-0001"]
    assert [[p.id for p in s] for s in splits.train] == [[f"train-{i:04x}" for i in range(2, 6)],
                                                          [f"train-{i:04x}" for i in range(6, 10)]]
    other = data.load_prompts(DataConfig(prompts=f"hf:{BINARIZED}", split="test_prefs", id_field="prompt_id",
                                         split_size=1))
    assert [p.text for p in other] == ["test question 0", "test question 1", "test question 2"]


def test_openbmb_ultrafeedback_from_the_cache_ids_from_the_row(cache, tmp_path):
    put_in_cache(cache, OPENBMB, {"train": openbmb_rows(7)}, tmp_path)
    for id_field in ("id", None):  # no id column: the default "id" and id_field: null both number the rows
        cfg = DataConfig(prompts=f"hf:{OPENBMB}", prompt_field="instruction", id_field=id_field, split_size=2)
        prompts = data.load_prompts(cfg)
        assert [(p.id, p.text) for p in prompts[:2]] == [("row000000", "instruction 0"), ("row000001", "instruction 1")]
        assert len({p.id for p in prompts}) == 7
    shuffled = data.load_prompts(DataConfig(prompts=f"hf:{OPENBMB}", prompt_field="instruction", shuffle=True,
                                            seed=3, split_size=2))
    assert sorted(p.id for p in shuffled) == [p.id for p in prompts] != [p.id for p in shuffled]
    assert dict((p.id, p.text) for p in shuffled) == dict((p.id, p.text) for p in prompts)  # ids before shuffling


def test_the_wrong_field_names_the_columns_the_dataset_has(cache, tmp_path):
    put_in_cache(cache, OPENBMB, {"train": openbmb_rows(3)}, tmp_path)
    with pytest.raises(data.DataError) as e:
        data.load_prompts(DataConfig(prompts=f"hf:{OPENBMB}", split_size=1))  # prompt_field defaults to "prompt"
    msg = str(e.value)
    assert "no column 'prompt' (data.prompt_field)" in msg and "'instruction'" in msg and "'completions'" in msg


def test_an_unknown_split_names_the_splits_of_the_dataset(cache, tmp_path):
    put_in_cache(cache, BINARIZED, {"train_prefs": binarized_rows(2, "train"),
                                    "test_prefs": binarized_rows(2, "test")}, tmp_path)
    with pytest.raises(data.DataError) as e:
        data.load_prompts(DataConfig(prompts=f"hf:{BINARIZED}", split_size=1))  # split null: train
    msg = str(e.value)
    assert msg.startswith("data.split:") and "no split 'train'" in msg
    assert "train_prefs" in msg and "test_prefs" in msg


def test_duplicate_ids_in_a_hub_dataset_stay_an_error(cache, tmp_path):
    rows = binarized_rows(3, "train")
    rows["prompt_id"][2] = rows["prompt_id"][0]
    put_in_cache(cache, BINARIZED, {"train_prefs": rows}, tmp_path)
    with pytest.raises(data.DataError, match="ids must be unique") as e:
        data.load_prompts(DataConfig(prompts=f"hf:{BINARIZED}", split="train_prefs", id_field="prompt_id",
                                     split_size=1))
    assert "row 1" in str(e.value) and "row 3" in str(e.value)


# ------------------------------------------------------------------ a local folder, subsets, saved dicts


def test_a_local_dataset_folder_and_its_subsets(cache, tmp_path):
    folder = dataset_folder(tmp_path / "repo", {"default": {"train": openbmb_rows(4)},
                                                "small": {"train": openbmb_rows(2), "test": openbmb_rows(1)}})
    cfg = DataConfig(prompts=f"hf:{folder}", prompt_field="instruction", split_size=1)
    assert len(data.load_prompts(cfg)) == 4
    cfg.subset = "small"
    assert len(data.load_prompts(cfg)) == 2
    cfg.split = "test"
    assert len(data.load_prompts(cfg)) == 1
    cfg.subset = "large"
    with pytest.raises(data.DataError) as e:
        data.load_prompts(cfg)
    assert str(e.value).startswith("data.subset:") and "'large'" in str(e.value) and "'small'" in str(e.value)


def test_a_missing_local_folder_is_a_message(cache, tmp_path):
    with pytest.raises(data.DataError, match="data.prompts: cannot load hf:.*no_such_folder"):
        data.load_prompts(DataConfig(prompts=f"hf:{tmp_path / 'no_such_folder'}", split_size=1))


def test_a_saved_dataset_dict_reads_the_split_data_split_names(cache, tmp_path):
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_dict(binarized_rows(5, "train")),
                          "test_prefs": datasets.Dataset.from_dict(binarized_rows(2, "test"))}).save_to_disk(str(saved))
    cfg = DataConfig(prompts=str(saved), split="train_prefs", id_field="prompt_id", split_size=1)
    prompts = data.load_prompts(cfg)
    assert [p.id for p in prompts] == [f"train-{i:04x}" for i in range(5)]
    cfg.split = None
    with pytest.raises(data.DataError) as e:
        data.load_prompts(cfg)
    assert "not 'train'" in str(e.value) and "['train_prefs', 'test_prefs']" in str(e.value)


def test_a_saved_single_dataset_refuses_a_split(cache, tmp_path):
    saved = tmp_path / "one"
    datasets.Dataset.from_dict(openbmb_rows(3)).save_to_disk(str(saved))
    cfg = DataConfig(prompts=str(saved), prompt_field="instruction", split_size=1)
    assert len(data.load_prompts(cfg)) == 3
    cfg.split = "train_prefs"
    with pytest.raises(data.DataError, match="holds one dataset.*remove data.split"):
        data.load_prompts(cfg)


def test_a_jsonl_record_without_the_field_names_its_fields(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"instruction": "hi", "source": "x"}) + "\n")
    with pytest.raises(data.DataError, match=r"p.jsonl:1: field 'prompt'.*fields are \['instruction', 'source'\]"):
        data.load_prompts(DataConfig(prompts=str(f), split_size=1))


# ------------------------------------------------------------- offline without the cache: check, dry run


def recipe_with(tmp_path: Path, prompts: str, **data_keys):
    """The embedded default's recipe on ``prompts`` (set after loading, as the CLI would keep an hf: id)."""
    model = tmp_path / "model"  # π_1 is identified by content: a small stand-in directory
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text("{}")
    r = recipe_mod.load(ROOT / "recipes" / "smollm2_sppo_3iter.yaml",
                        [f"output_dir={tmp_path / 'runs'}", f"policy.model={model}"], check_data=False)
    r.data.prompts = prompts
    for key, value in data_keys.items():
        setattr(r.data, key, value)
    return r


def test_uncached_offline_fails_to_read_naming_the_download(cache):
    cfg = DataConfig(prompts=f"hf:{BINARIZED}", split="train_prefs", id_field="prompt_id", split_size=1)
    with pytest.raises(data.NotCached) as e:
        data.load_prompts(cfg)
    msg = str(e.value)
    assert f"hf:{BINARIZED} is not in the local datasets cache ({cache})" in msg and "HF_HUB_OFFLINE" in msg
    assert ("python -c \"import datasets; datasets.load_dataset('HuggingFaceH4/ultrafeedback_binarized', "
            "split='train_prefs')\"") in msg
    assert isinstance(e.value, data.DataError) and e.value.exit_code == 1


def test_validate_passes_an_uncached_dataset_offline_with_a_note(cache, tmp_path):
    r = recipe_with(tmp_path, f"hf:{OPENBMB}", prompt_field="instruction", subset="evol")
    assert data.check(r, tmp_path) == []
    note = data.availability(r.data, tmp_path)
    assert note.startswith(f"prompts not checked: hf:{OPENBMB} (subset evol) is not in the local cache")
    assert "datasets.load_dataset('openbmb/UltraFeedback', 'evol', split='train')" in note and "\n" not in note


def test_check_counts_a_cached_dataset_and_names_what_is_short(cache, tmp_path):
    put_in_cache(cache, BINARIZED, {"train_prefs": binarized_rows(100, "train")}, tmp_path)
    r = recipe_with(tmp_path, f"hf:{BINARIZED}", split="train_prefs", id_field="prompt_id")
    assert data.availability(r.data, tmp_path) is None
    assert [p.split(":")[0] for p in data.check(r, tmp_path)] == ["data.split_size"]  # 100 − 64 < 64
    r.data.eval_size, r.data.split_size = 10, 30
    assert data.check(r, tmp_path) == []
    r.data.split = "test_prefs"
    assert data.check(r, tmp_path)[0].startswith("data.split: hf:HuggingFaceH4/ultrafeedback_binarized has no")


def test_split_and_subset_of_a_plain_file_are_problems(tmp_path):
    r = recipe_with(tmp_path, "builtin", split="train_prefs", subset="default")
    assert [p.split(":")[0] for p in data.check(r, tmp_path)] == ["data.subset", "data.split"]


def test_the_dry_run_lists_the_plan_when_the_prompts_are_not_cached(cache, tmp_path):
    r = recipe_with(tmp_path, f"hf:{BINARIZED}", split="train_prefs", id_field="prompt_id")
    ctx = Context(r, tmp_path / "runs" / r.name, progress=False)
    states = status(ctx)
    assert [(t, n) for t, n, _ in states][:3] == [(0, "evaluate"), (1, "generate"), (1, "annotate")]
    first = states[0][2]
    assert first.startswith("todo; prompts not readable: data.prompts: hf:HuggingFaceH4/ultrafeedback_binarized "
                            "is not in the local datasets cache")
    assert "datasets.load_dataset(" in first and "\n" not in first
    assert [s for _, _, s in states[1:]] == ["todo"] * (len(states) - 1)


def test_the_dry_run_leaves_finished_stages_that_need_the_prompts_unchecked(cache, tmp_path):
    r = recipe_with(tmp_path, f"hf:{BINARIZED}", split="train_prefs", id_field="prompt_id")
    ctx = Context(r, tmp_path / "runs" / r.name, progress=False)
    for t, name in ((0, "evaluate"), (1, "generate")):
        stage = ctx.stage(t, name)
        (stage.begin({"test": True}) / "out.jsonl").write_text("{}\n")
        stage.commit({"test": True}, 0.0)
    states = [s for _, _, s in status(ctx)]
    assert states[0].startswith("done, not checked; prompts not readable: data.prompts: hf:")
    assert states[1:] == ["done, not checked (prompts not readable)"] + ["todo"] * (len(states) - 2)


# -------------------------------------------------------- the variables themselves, as datasets reads them


@pytest.mark.parametrize("offline", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_the_offline_variables_and_hf_home(tmp_path, offline):
    """datasets reads HF_HOME and the offline switches at import: a fresh interpreter with either switch
    alone and an empty HF_HOME gets the message naming that cache, and check passes."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_DATASETS_CACHE", "PYTHONWARNINGS")}
    env.update({offline: "1", "HF_HOME": str(tmp_path / "hf_home")})
    script = ("from sppo_nemo.formats import data\nfrom sppo_nemo.schema.config import DataConfig\n"
              f"cfg = DataConfig(prompts='hf:{BINARIZED}', split='train_prefs', split_size=1)\n"
              "print(data.availability(cfg))\n"
              "try:\n    data.load_prompts(cfg)\nexcept data.DataError as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    note, error = proc.stdout.splitlines()
    cache = tmp_path / "hf_home" / "datasets"
    assert note.startswith(f"prompts not checked: hf:{BINARIZED} is not in the local cache ({cache})")
    assert error.startswith(f"data.prompts: hf:{BINARIZED} is not in the local datasets cache ({cache})")
    assert "offline mode" in error


def test_without_the_datasets_package_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets where it is not installed
    with pytest.raises(data.DataError, match=r"pip install 'sppo-nemo\[hub\]'"):
        data.load_prompts(DataConfig(prompts=f"hf:{BINARIZED}", split_size=1))
