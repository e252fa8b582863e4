"""pipeline.atomic.atomic_write: the new file or the old one, never half; no temp file left; unique temp names."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import atomic
from pipeline.atomic import atomic_write, temp_path

ROOT = Path(__file__).resolve().parent.parent


def test_replaces_the_file_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")
    with atomic_write(path) as tmp:
        assert tmp.parent == tmp_path and not tmp.exists()
        tmp.write_text("new\n")
        assert path.read_text() == "old\n"  # nothing visible before the block ends
    assert path.read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]


def test_creates_a_file_that_did_not_exist(tmp_path):
    with atomic_write(str(tmp_path / "a.json")) as tmp:
        tmp.write_bytes(b"{}")
    assert (tmp_path / "a.json").read_bytes() == b"{}"


def test_an_exception_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):  # BaseException too: Ctrl-C in the middle of a write
        with atomic_write(path) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_fsync_flushes_the_temp_file_before_the_rename(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    synced = []

    def fsync(fd):
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), path.exists()))

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with atomic_write(path, fsync=True) as tmp:
        tmp.write_bytes(b"new")
    assert synced == [(str(tmp), False)]
    assert path.read_bytes() == b"new"
    synced.clear()
    with atomic_write(path) as tmp:
        tmp.write_bytes(b"newer")
    assert synced == []


def test_temp_names_are_unique_hidden_and_keep_the_suffix(tmp_path):
    path = tmp_path / "curves.png"
    names = {temp_path(path).name for _ in range(100)}
    assert len(names) == 100
    host = os.uname().nodename
    for name in names:
        # hidden, ".partial" (what prepare_data.py's remove_partials deletes), host and pid, the suffix last
        assert name.startswith(f".curves.png.partial-{host}-{os.getpid()}-") and name.endswith(".png")
    other = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); from pathlib "
                            "import Path; from pipeline.atomic import temp_path; print(temp_path(Path(sys.argv[2])))",
                            str(ROOT), str(path)], capture_output=True, text=True, check=True)
    assert Path(other.stdout.strip()).name not in names
    assert f"-{os.getpid()}-" not in Path(other.stdout.strip()).name
