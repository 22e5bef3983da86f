"""Stage folders: atomic commit, fingerprints that name the changed key, partial reuse, committed
files verified before reuse, atomic removal."""

import errno
import json
import time

import os

import pytest

from sppo_nemo import cli
from sppo_nemo.formats.artifacts import FORMAT, CorruptStageError, Stage, StaleStageError, canonical, content_digest


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


def test_canonical_flattens_and_normalises():
    assert canonical({"a": {"b": (1, 2)}, "c": None}) == {"a.b": [1, 2], "c": None}


def test_disk_full_is_a_clear_error_that_keeps_the_work(monkeypatch, capsys, tmp_path):
    import sppo_nemo.run.runner as runner

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))

    monkeypatch.setattr(runner, "execute", full)
    rc = cli.main(["recipes/smollm2_sppo_3iter.yaml", f"output_dir={tmp_path}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "disk is full" in err and "rerun the same command" in err


def committed(tmp_path, files: dict[str, bytes]) -> Stage:
    st = Stage(tmp_path / "iter_01" / "generate")
    work = st.begin({"K": 4})
    for name, data in files.items():
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_bytes(data)
    st.commit({"K": 4}, time.time())
    return st


@pytest.mark.parametrize("tamper, named", [
    (lambda p: p.joinpath("responses.jsonl").write_bytes(b"{}\n"), "responses.jsonl: 9 bytes when committed, 3 now"),
    (lambda p: p.joinpath("policy", "model.safetensors").unlink(), "policy/model.safetensors: deleted"),
    (lambda p: p.joinpath("responses.jsonl").write_bytes(b"{\"a\": 2}\n"), "responses.jsonl: its content changed"),
    (lambda p: p.joinpath("extra.txt").write_text("x"), "extra.txt: added"),
])
def test_a_finished_stage_whose_files_changed_is_reported_by_name(tmp_path, tamper, named):
    st = committed(tmp_path, {"responses.jsonl": b'{"a": 1}\n', "policy/model.safetensors": b"weights"})
    st.verify()  # untouched: fine
    tamper(st.path)
    with pytest.raises(CorruptStageError) as info:
        st.verify()
    assert named in str(info.value) and "--restart-from iter_01/generate" in str(info.value)


def test_fast_verification_hashes_a_file_whose_mtime_moved(tmp_path):
    st = committed(tmp_path, {"responses.jsonl": b'{"a": 1}\n'})
    path = st.path / "responses.jsonl"
    os.utime(path, ns=(1, 1))  # a copy without -p, a touch: same content, other mtime
    st.verify()
    path.write_bytes(b'{"a": 9}\n')  # same size, other content
    os.utime(path, ns=(st.manifest()["files"]["responses.jsonl"]["mtime_ns"],) * 2)  # and the old mtime
    st.verify()  # fast mode trusts size and mtime ...
    with pytest.raises(CorruptStageError):
        st.verify(full=True)  # ... full mode hashes every file


def test_a_garbage_manifest_is_a_clear_error(tmp_path):
    st = committed(tmp_path, {"responses.jsonl": b"{}\n"})
    (st.path / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptStageError, match="manifest.json cannot be read"):
        st.digest()


def test_remove_renames_aside_first_and_tidy_cleans_leftovers(tmp_path):
    st = committed(tmp_path, {"responses.jsonl": b"{}\n"})
    st.trash.mkdir()  # what a crash in the middle of remove() leaves
    (st.trash / "half").write_text("x")
    st.partial.write_text("junk")  # a file where the partial folder belongs
    st.tidy()
    assert not st.trash.exists() and not st.partial.exists() and st.done()
    st.remove()
    assert not st.path.exists() and not st.trash.exists()


def test_content_digest_follows_content_not_path_and_caches_hashes(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"weights")
    cache = tmp_path / "cache.json"
    assert content_digest(a, cache) == content_digest(b, tmp_path / "other.json")
    first = content_digest(a, cache)
    (a / "model.safetensors").write_bytes(b"WEIGHTS")  # replaced in place
    assert content_digest(a, cache) != first


def test_content_changes_names_each_file_between_two_digests_the_cache_saw(tmp_path):
    from sppo_nemo.formats.artifacts import KEPT_CONTENTS, content_changes

    a, cache = tmp_path / "a", tmp_path / "cache.json"
    a.mkdir()
    (a / "model.safetensors").write_bytes(b"weights")
    (a / "config.json").write_text("{}")
    first = content_digest(a, cache)
    (a / "model.safetensors").write_bytes(b"WEIGHTS")  # replaced in place
    (a / "config.json").unlink()
    second = content_digest(a, cache)
    assert content_changes(cache, first, second) == [("config.json", "deleted"),
                                                     ("model.safetensors", "its content changed")]
    assert content_changes(cache, second, first) == [("config.json", "added"),
                                                     ("model.safetensors", "its content changed")]
    assert content_changes(cache, first, "0" * 16) is None  # never seen: nothing to compare with
    for i in range(KEPT_CONTENTS):
        (a / "model.safetensors").write_bytes(b"w%d" % i)
        content_digest(a, cache)
    assert content_changes(cache, first, second) is None  # only the last few are kept


def test_a_stage_of_an_older_format_is_refused_naming_restart_from(tmp_path):
    st = committed(tmp_path, {"responses.jsonl": b"{}\n"})
    m = st.manifest()
    assert m["format"] == FORMAT
    for older in ({k: v for k, v in m.items() if k not in ("format", "files")}, dict(m, format=FORMAT - 1)):
        (st.path / "manifest.json").write_text(json.dumps(older))
        with pytest.raises(StaleStageError) as exc:
            st.verify()
        assert str(exc.value) == (
            f"{st.label} was made by an older sppo-nemo (run-directory format {older.get('format', 1)}; this "
            f"version reads format {FORMAT}), so it is not reused. Redo it and everything after it with "
            f"--restart-from {st.label}, or start afresh under another name (name=...).")
