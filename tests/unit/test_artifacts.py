"""Stage folders: atomic commit, fingerprints that name the changed key, partial reuse."""

import errno
import json
import time

import pytest

from sppo_nemo import cli
from sppo_nemo.artifacts import Stage, StaleStageError, append_jsonl, canonical, read_jsonl


def test_commit_is_a_rename_with_manifest_and_marker(tmp_path):
    st = Stage(tmp_path / "iter_01" / "generate")
    work = st.begin({"K": 4, "sampling": {"top_p": 1.0}})
    assert work == st.partial and not st.done()
    (work / "responses.jsonl").write_text("{}\n")
    st.commit({"K": 4, "sampling": {"top_p": 1.0}}, time.time())
    assert st.done() and not st.partial.exists()
    m = st.manifest()
    assert m["fingerprint"] == {"K": 4, "sampling.top_p": 1.0}
    assert len(m["digest"]) == 16


def test_check_names_every_changed_dotted_key(tmp_path):
    st = Stage(tmp_path / "iter_02" / "train")
    st.begin({"trainer": {"lr": 1e-6, "epochs": 1}, "eta": 1000.0})
    st.commit({"trainer": {"lr": 1e-6, "epochs": 1}, "eta": 1000.0}, time.time())
    st.check({"trainer": {"lr": 1e-6, "epochs": 1}, "eta": 1000.0}, tmp_path)  # same: no error
    with pytest.raises(StaleStageError) as info:
        st.check({"trainer": {"lr": 2e-6, "epochs": 1}, "eta": 10.0}, tmp_path)
    msg = str(info.value)
    assert "trainer.lr: was 1e-06, now 2e-06" in msg and "eta: was 1000.0, now 10.0" in msg
    assert "trainer.epochs" not in msg and "--restart-from iter_02/train" in msg


def test_partial_folder_is_kept_for_the_same_fingerprint_only(tmp_path):
    st = Stage(tmp_path / "iter_01" / "generate")
    work = st.begin({"K": 4})
    (work / "samples.log.jsonl").write_text('{"chunk": 0}\n')
    assert (st.begin({"K": 4}) / "samples.log.jsonl").exists()  # resumed
    assert not (st.begin({"K": 5}) / "samples.log.jsonl").exists()  # other work: started afresh


def test_torn_tail_is_tolerated_only_when_asked(tmp_path):
    path = tmp_path / "log.jsonl"
    append_jsonl(path, [{"a": 1}, {"a": 2}])
    with path.open("a") as fh:
        fh.write('{"a": 3, "b"')  # a write cut by kill -9
    assert read_jsonl(path, tolerate_torn_tail=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)


def test_canonical_flattens_and_normalises():
    assert canonical({"a": {"b": (1, 2)}, "c": None}) == {"a.b": [1, 2], "c": None}


def test_disk_full_is_a_clear_error_that_keeps_the_work(monkeypatch, capsys, tmp_path):
    import sppo_nemo.runner as runner

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(runner, "execute", full)
    rc = cli.main(["recipes/smollm2_sppo_3iter.yaml", f"output_dir={tmp_path}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "disk is full" in err and "rerun the same command" in err
