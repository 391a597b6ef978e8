"""The converters' output folder is committed whole: a run killed at any step leaves the old output or the new
one, never a mix; a run that fails leaves it byte-identical; runs into one --out wait for each other; no name
from the data or the command line writes outside --out; a full disk names the file."""
import errno
import io
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import converters.pipeline
import converters.targets
import qwenvl_recipes.io
from converters.__main__ import main
from converters.check import check_dir


def png_bytes(colour: tuple[int, int, int], size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def forgery_list(root: Path, rows: int, split: str = "train") -> Path:
    """`rows` real images of one split (distinct ids), as a forgery list."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ok.png").write_bytes(png_bytes((90, 20, 20)))
    path = root / f"list_{split}_{rows}.json"
    path.write_text(json.dumps([{"id": f"r{i}", "image_path": "ok.png", "label": 0, "split": split}
                                for i in range(rows)]))
    return path


def parquet_with_images(root: Path, colours: list[tuple[int, int, int]]) -> Path:
    """Grounding rows whose images are embedded (the converter writes them under <out>/images)."""
    path = root / "train-00000.parquet"
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist([
        {"question_id": i, "image": {"bytes": png_bytes(c), "path": None}, "bbox": [1, 1, 5, 5],
         "answer": [f"box {i}"]} for i, c in enumerate(colours)]), path)
    return path


def folder_bytes(folder: Path) -> dict[str, bytes] | None:
    """Every file under `folder` (hidden ones too) by relative path; None when there is no such folder."""
    if not folder.is_dir():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def beside(out: Path) -> list[str]:
    """What a writer put beside the output folder (staging folders, previous folders, its lock)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def child(argv: list[str], patches, stderr: Path | None = None) -> int:
    """The pid of a forked process running main(argv) with `patches` [(object, attribute,
    replacement(original))] applied, its stderr into the file `stderr` (default: discarded)."""
    pid = os.fork()
    if pid == 0:
        try:
            sys.stderr = open(stderr or os.devnull, "w", buffering=1)  # line by line: os._exit flushes nothing
            for obj, attribute, replacement in patches:
                setattr(obj, attribute, replacement(getattr(obj, attribute)))
            os._exit(main(argv))
        finally:
            os._exit(99)
    return pid


def in_child(argv: list[str], patches, stderr: Path | None = None) -> int:
    """child(...)'s raw wait status."""
    return os.waitpid(child(argv, patches, stderr), 0)[1]


def kill_on(call: int, after: bool = False):
    """A replacement that SIGKILLs the process on its `call`-th call (before it runs, or just after)."""
    def replace(original):
        calls = []

        def killer(*args, **kwargs):
            calls.append(1)
            if len(calls) == call and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if len(calls) == call and after:
                os.kill(os.getpid(), signal.SIGKILL)
            return result
        return killer
    return replace


def no_exchange(original):
    def refuse(a, b):  # a filesystem without renameat2 RENAME_EXCHANGE (NFS, other systems)
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(a))
    return refuse


# (where, patches): the run is killed at each step of writing and committing its output
COMMIT_POINTS = {
    "staging being filled with the folder's files": [(qwenvl_recipes.io, "_link_or_copy", kill_on(3))],
    "second row of a data file": [(converters.targets.RowWriter, "write", kill_on(2))],
    "one data file complete, the other not": [(converters.targets.RowWriter, "commit", kill_on(2))],
    "data files complete, dataset_info.json not": [(converters.pipeline, "write_text_atomic", kill_on(1))],
    "dataset_info.json written, manifest.json not": [(converters.pipeline, "write_text_atomic", kill_on(2))],
    "staging complete, not swapped": [(qwenvl_recipes.io, "_exchange", kill_on(1))],
    "swapped, old folder not removed": [(qwenvl_recipes.io, "_exchange", kill_on(1, after=True))],
    "two-rename swap: old folder moved aside, new not in place": [
        (qwenvl_recipes.io, "_exchange", no_exchange), (qwenvl_recipes.io.os, "rename", kill_on(1, after=True))],
}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """The old output (a forgery dataset in two splits + a grounding dataset with its images), a saved copy
    of it, the argv of a run replacing the grounding dataset (other images), and the new output it makes."""
    root = tmp_path_factory.mktemp("commit")
    out = root / "work" / "out"
    assert main(["forgery", "--input", str(forgery_list(root / "in", 3)), "--out", str(out)]) == 0
    assert main(["forgery", "--input", str(forgery_list(root / "in", 2, "val")), "--out", str(out)]) == 0
    refs = ["--out", str(out), "--name", "refs", "--bbox-format", "xywh"]
    old_refs = parquet_with_images(root / "old", [(1, 2, 3), (4, 5, 6)])
    assert main(["refcoco", "--input", str(old_refs), *refs]) == 0
    shutil.copytree(out, root / "saved")
    new_refs = parquet_with_images(root / "new", [(7, 8, 9), (10, 11, 12), (13, 14, 15)])
    new_argv = ["refcoco", "--input", str(new_refs), *refs]
    assert main(new_argv) == 0
    new = folder_bytes(out)
    return out, root / "saved", new_argv, new


def restore(out: Path, saved: Path) -> dict[str, bytes]:
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(saved, out)
    return folder_bytes(out)


@pytest.mark.parametrize("point", COMMIT_POINTS)
def test_a_run_killed_at_any_step_leaves_the_old_output_or_the_new_one(point, outputs, capsys):
    out, saved, new_argv, new = outputs
    old = restore(out, saved)
    assert old != new and not beside(out)
    status = in_child(new_argv, COMMIT_POINTS[point])
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # the step was reached
    killed = folder_bytes(out)
    if point.startswith("two-rename"):
        assert killed is None  # the only moment a reader finds no folder; the next run puts the old one back
    else:
        assert killed in (old, new), "a mix of the old output and the new one"
        assert check_dir(out) == []
    # The next run that commits nothing (a --strict run with a skip) finishes what the killed one left ...
    bad = saved.parent / "bad.json"
    bad.write_text(json.dumps([{"id": "ok", "image_path": "in/ok.png", "label": 0},
                               {"id": "bad", "image_path": "in/ok.png", "label": 5}]))
    assert main(["forgery", "--input", str(bad), "--out", str(out), "--strict"]) == 1
    assert folder_bytes(out) in (old, new) and (killed is not None or folder_bytes(out) == old)
    assert not beside(out)
    # ... and a complete run gives exactly the new output.
    assert main(new_argv) == 0
    assert folder_bytes(out) == new and not beside(out)
    capsys.readouterr()


def test_a_swap_without_rename_exchange_commits_too(outputs, monkeypatch):
    out, saved, new_argv, new = outputs
    restore(out, saved)
    monkeypatch.setattr(qwenvl_recipes.io, "_exchange", no_exchange(None))
    assert main(new_argv) == 0
    assert folder_bytes(out) == new and not beside(out)


def test_two_runs_into_one_out_wait_for_each_other(tmp_path):
    """A is held inside its commit (index files read, not yet written) while B runs; B must wait for A's lock,
    and then both datasets are in dataset_info.json and manifest.json."""
    out = tmp_path / "out"
    first = forgery_list(tmp_path / "in", 2)
    second = forgery_list(tmp_path / "in", 3)
    b_err, b_done, a_inside = tmp_path / "b.err", tmp_path / "b_done", tmp_path / "a_inside"

    def hold_until_b_waits_or_ends(original):
        def held(*args, **kwargs):
            a_inside.touch()
            deadline = time.monotonic() + 60
            while not b_done.exists() and "is writing into it" not in (b_err.read_text() if b_err.exists() else ""):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            return original(*args, **kwargs)
        return held

    a = child(["forgery", "--input", str(first), "--out", str(out), "--name", "first"],
              [(converters.pipeline, "write_text_atomic", hold_until_b_waits_or_ends)])
    deadline = time.monotonic() + 60
    while not a_inside.exists():
        assert time.monotonic() < deadline and os.waitpid(a, os.WNOHANG) == (0, 0), "A ended before its commit"
        time.sleep(0.02)
    b_status = in_child(["forgery", "--input", str(second), "--out", str(out), "--name", "second"], [], b_err)
    b_done.touch()
    assert os.waitstatus_to_exitcode(os.waitpid(a, 0)[1]) == 0 and os.waitstatus_to_exitcode(b_status) == 0
    assert sorted(json.loads((out / "dataset_info.json").read_text())) == ["first_train", "second_train"]
    assert sorted(json.loads((out / "manifest.json").read_text())["datasets"]) == ["first_train", "second_train"]
    told = b_err.read_text()
    assert f"{out}: another converter run (process " in told and "is writing into it; waiting" in told
    assert check_dir(out) == [] and not beside(out)


def full_disk_on(file_name: str):
    """os.fdopen whose files raise ENOSPC on write when their temp name is that of `file_name`."""
    real_fdopen = os.fdopen

    class Full(io.TextIOBase):
        def __init__(self, file):
            self.file = file

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self.file.close()

    def fdopen(fd, *args, **kwargs):
        file = real_fdopen(fd, *args, **kwargs)
        return Full(file) if Path(os.readlink(f"/proc/self/fd/{fd}")).name.startswith(f".{file_name}.") else file
    return fdopen


@pytest.mark.parametrize("file_name", ["forgery_train.json", "forgery_train.jsonl", "manifest.json"])
def test_a_full_disk_names_the_file_and_leaves_the_output(file_name, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(forgery_list(tmp_path / "in", 2)), "--out", str(out)]) == 0
    before = folder_bytes(out)
    capsys.readouterr()
    monkeypatch.setattr(os, "fdopen", full_disk_on(file_name))
    assert main(["forgery", "--input", str(forgery_list(tmp_path / "in", 3)), "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: {out / file_name}: No space left on device\n"
    assert folder_bytes(out) == before and not beside(out)


def test_leftovers_of_killed_writers_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    source = forgery_list(tmp_path / "in", 2)
    assert main(["forgery", "--input", str(source), "--out", str(out)]) == 0
    (out / ".forgery_train.json.k3x9a_2b.tmp").write_text("[{")  # an older writer's temp file
    (tmp_path / ".out.staging-ab12cd34").mkdir()  # a staging folder of a killed run
    (tmp_path / ".out.staging-ab12cd34" / "forgery_train.json").write_text("[]")
    assert main(["forgery", "--input", str(source), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset_info.json", "forgery_train.json",
                                                     "forgery_train.jsonl", "manifest.json"]
    assert not beside(out)


@pytest.mark.parametrize("where", ["the input's folder", "a folder above it"])
def test_out_holding_an_input_is_refused(where, tmp_path, capsys):
    source = forgery_list(tmp_path / "data" / "in", 2)
    out = source.parent if where == "the input's folder" else tmp_path / "data"
    before = folder_bytes(tmp_path)
    assert main(["forgery", "--input", str(source), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: --out {out}: holds the input {source}; "
                                       "write the output to another folder\n")
    assert folder_bytes(tmp_path) == before


@pytest.mark.parametrize("name", ["../escaped", "a/b", ".hidden", "-x", "a b"])
def test_a_name_that_is_not_a_plain_name_is_refused(name, tmp_path, capsys):
    source = forgery_list(tmp_path / "in", 2)
    before = folder_bytes(tmp_path)
    assert main(["forgery", "--input", str(source), "--out", str(tmp_path / "work" / "out"), f"--name={name}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --name {name!r} is not a plain name") and err.count("\n") == 1
    assert folder_bytes(tmp_path) == before and not (tmp_path / "work").exists()


def test_check_finds_a_data_file_the_manifest_does_not_record(tmp_path):
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(forgery_list(tmp_path / "in", 3)), "--out", str(out)]) == 0
    assert main(["forgery", "--input", str(forgery_list(tmp_path / "in", 2)), "--out", str(tmp_path / "other")]) == 0
    shutil.copy(tmp_path / "other" / "forgery_train.jsonl", out / "forgery_train.jsonl")  # valid rows, not these
    assert check_dir(out) == ["forgery_train.jsonl: not the file manifest.json records for 'forgery_train' (its "
                              "sha256 differs): it changed after the conversion; convert again"]


def test_check_reads_no_file_outside_the_folder(tmp_path):
    out = tmp_path / "out"
    assert main(["forgery", "--input", str(forgery_list(tmp_path / "in", 2)), "--out", str(out)]) == 0
    info = json.loads((out / "dataset_info.json").read_text())
    info["outside"] = {**info["forgery_train"], "file_name": "../in/list_train_2.json"}
    (out / "dataset_info.json").write_text(json.dumps(info))
    assert check_dir(out) == ["dataset_info.json: entry 'outside' names '../in/list_train_2.json', "
                              "not a file of this folder"]


@pytest.mark.parametrize("where", [".", ".."])
def test_out_holding_the_current_folder_is_refused(where, tmp_path, capsys, monkeypatch):
    source = forgery_list(tmp_path / "in", 2)
    (tmp_path / "out" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "out" / ("sub" if where == ".." else ""))
    assert main(["forgery", "--input", str(source), "--out", where]) == 2
    assert capsys.readouterr().err == (f"error: {where}: is the current folder or holds it; the folder is replaced "
                                       "as a whole, which would leave this shell in a removed folder: run from "
                                       "outside it\n")
    assert sorted(p.name for p in (tmp_path / "out").rglob("*")) == ["sub"]


def test_out_that_is_a_mount_point_is_refused(tmp_path, capsys, monkeypatch):
    source = forgery_list(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: str(path) == str(out) or real_ismount(path))
    assert main(["forgery", "--input", str(source), "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: {out}: is a mount point, which cannot be replaced by a rename; "
                                       "use a folder inside it\n")
    assert not list(out.iterdir()) and not beside(out)
