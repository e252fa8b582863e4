"""prepare_data.py --shard K/N: shards as concurrent processes into one DST, merged by the last to end (or --merge),
give what one unsharded run gives; a shard killed with kill -9 is finished by running it again; the locks."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_prepare import make_video

import prepare_data
from prepare import run, shards
from prepare.listing import Listing, Source
from prepare.run import lock_dst

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ("train.csv", "val.csv", "classes.csv", "rejected.csv")
SAME_IN_REPORT = ("videos", "rows", "classes", "frames", "frames_transcoded", "bytes_in", "bytes_out",
                  "rejected_by_reason", "notes", "decode_errors", "listing", "interrupted")

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="flock and kill -9; Linux only")


def kinetics_src(root: Path, frames: int = 12, size: tuple[int, int] = (64, 48)) -> Path:
    """A Kinetics-layout dataset of 14 listed videos in 3 classes: one listed but absent, one empty (rejected by its
    worker), one present but unlisted."""
    src = root / "kinetics"
    (src / "annotations").mkdir(parents=True)
    train = [(f"{c}{i}", label) for c, label in (("a", "abseiling"), ("b", "bowling")) for i in range(4)]
    train += [("c0", "cooking"), ("c1", "cooking"), ("gone", "cooking")]
    val = [("v0", "abseiling"), ("v1", "bowling"), ("v2", "cooking")]
    for csv, videos in (("train", train), ("val", val)):
        lines = ["label,youtube_id,time_start,time_end,split"]
        lines += [f"{label},{vid},0,10,{csv}" for vid, label in videos]
        (src / "annotations" / f"{csv}.csv").write_text("\n".join(lines) + "\n")
        for i, (vid, _) in enumerate(videos):
            path = src / csv / f"{vid}_000000_000010.mp4"
            if vid == "c1":
                path.write_bytes(b"")
            elif vid != "gone":
                make_video(path, frames + i, *size)
    make_video(src / "train" / "zz_000000_000010.mp4", 8)  # in no CSV
    return src


def command(src: Path, dst: Path, *extra: str, height: int = 32) -> list[str]:
    return [sys.executable, str(ROOT / "prepare_data.py"), str(src), "--out", str(dst), "--height", str(height),
            "--workers", "1", *extra]


ENV = {**os.environ, "COLUMNS": "1000"}  # rich's console width in the child: messages stay on one line


def runs(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=ENV, timeout=600)


def starts(args: list[str], **kwargs) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, text=True, env=ENV, **kwargs)


def report(dst: Path) -> dict:
    return json.loads((dst / "prepare_report.json").read_text())


def assert_same_results(dst: Path, single: Path, fresh: bool = True) -> None:
    """Manifests, class list and rejected.csv byte for byte, the videos, and the report's numbers. fresh=False: some
    videos were reused (prepared by a killed run), so only prepared + reused equals the single run's prepared."""
    for name in RESULTS:
        assert (dst / name).read_bytes() == (single / name).read_bytes(), name
    videos = {p.relative_to(dst): p.read_bytes() for p in (dst / "videos").rglob("*.webm")}
    assert videos == {p.relative_to(single): p.read_bytes() for p in (single / "videos").rglob("*.webm")}
    r, one = report(dst), report(single)
    keys = SAME_IN_REPORT if fresh else [k for k in SAME_IN_REPORT if k not in ("videos", "frames_transcoded")]
    assert {k: r[k] for k in keys} == {k: one[k] for k in keys}
    v, w = r["videos"], one["videos"]
    assert (v["listed"], v["rejected"], v["prepared"] + v["reused"]) == (w["listed"], w["rejected"], w["prepared"])


@pytest.fixture(scope="module")
def src_and_single(tmp_path_factory) -> tuple[Path, Path]:
    src = kinetics_src(tmp_path_factory.mktemp("src"))
    single = src.parent / "single"
    assert runs(command(src, single)).returncode == 0
    return src, single


def test_three_concurrent_shards_then_merge_equal_one_run(src_and_single, tmp_path):
    src, single = src_and_single
    dst = tmp_path / "dst"
    procs = [starts(command(src, dst, "--shard", f"{k}/3"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for k in range(3)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert sum("merged the 3 shards' results into" in o for o in outputs) >= 1, outputs
    states = shards.read_states(dst, 3)
    assert [states[k]["jobs"] for k in range(3)] == [5, 5, 3]  # each shard had its share of the 13 files listed
    assert_same_results(dst, single)
    r = report(dst)
    assert r["videos"] == {"listed": 15, "prepared": 12, "reused": 0, "rejected": 3}
    assert r["shards"]["count"] == 3 and r["config"]["shard"] is None
    # the explicit merge writes the same again
    for name in RESULTS:
        (dst / name).unlink()
    done = runs([sys.executable, str(ROOT / "prepare_data.py"), "--merge", str(dst)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same_results(dst, single)


def test_a_shard_killed_with_kill_9_and_run_again_gives_the_same_result(tmp_path):
    # longer videos: shard 1 must still be busy when the test kills it
    src = kinetics_src(tmp_path, frames=48, size=(160, 120))
    single = tmp_path / "single"
    assert runs(command(src, single, height=120)).returncode == 0
    dst = tmp_path / "dst"
    for k in (0, 2):
        done = runs(command(src, dst, "--shard", f"{k}/3", height=120))
        assert done.returncode == 0
        assert "shards not finished: 1/3 (not ended)" in done.stdout
    assert not (dst / "train.csv").exists()
    proc = starts(command(src, dst, "--shard", "1/3", height=120), stdout=subprocess.DEVNULL,
                  stderr=subprocess.DEVNULL, start_new_session=True)
    mine = {j.output for j in shards.select(run.plan_jobs(prepare_data.PrepareConfig(
        src=src, out=dst, layout="kinetics", codec="vp9", height=120, gop=16, crf=32, workers=1, threads=1, cores=1,
        timeout_s=0, verify=False).listing(), prepare_data.EncodeSettings(height=120)), src, shards.Shard(1, 3))}
    try:  # until one of shard 1's videos is recorded
        deadline = time.monotonic() + 120
        while not any((dst / run.RECORDS / f"{out}.json").exists() for out in mine if "c1_" not in out):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the shard and its workers
        proc.wait()
    done_before = sum((dst / out).exists() for out in mine)
    assert 1 <= done_before < len(mine) - 1, "shard 1 was not interrupted mid-way; make the videos longer"
    assert not (dst / "train.csv").exists() and 1 not in shards.read_states(dst, 3)
    assert prepare_data.main(["--merge", str(dst)]) == 1  # "shards not finished (of 3: 1/3 (not ended))"
    done = runs(command(src, dst, "--shard", "1/3", height=120))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "merged the 3 shards' results into" in done.stdout
    assert_same_results(dst, single, fresh=False)
    assert not [p for p in dst.rglob(".*") if "partial" in p.name or p.name.endswith(".started")]
    assert report(dst)["videos"]["prepared"] < 12  # shards 0 and 2's, and the killed run's, were kept


def test_locks_the_same_shard_never_runs_twice_other_shards_do_not_wait(src_and_single, tmp_path):
    src, single = src_and_single
    dst = tmp_path / "dst"
    dst.mkdir()
    with shards.ShardLocks(dst, shards.Shard(0, 2), wait=print):  # shard 0 "running" in this process
        again = runs(command(src, dst, "--shard", "0/2"))
        assert again.returncode == 2
        assert f"error: {dst}: shard 0/2 is already running on it (pid {os.getpid()}). HINT:" in again.stdout
        other = runs(command(src, dst, "--shard", "1/2"))
        assert other.returncode == 0, other.stdout  # not blocked; and not the last: shard 0 has not ended
        assert "other shards are still running: the last to end writes the manifests" in other.stdout
        whole = runs(command(src, dst))
        assert whole.returncode == 2
        assert f"error: {dst}: another prepare_data.py (or shards of a --shard run) is running on it" in whole.stdout
        merge = runs([sys.executable, str(ROOT / "prepare_data.py"), "--merge", str(dst)])
        assert merge.returncode == 2 and "is running on it" in merge.stdout
    assert not (dst / "train.csv").exists()
    assert runs(command(src, dst, "--shard", "0/2")).returncode == 0
    assert_same_results(dst, single)


def test_a_shard_waits_for_a_merge_and_refuses_an_unsharded_run(src_and_single, tmp_path):
    src, _ = src_and_single
    dst = tmp_path / "dst"
    dst.mkdir()
    lock, _ = lock_dst(dst, role="merge")
    try:
        proc = starts(command(src, dst, "--shard", "0/9"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(3)
        assert proc.poll() is None  # waiting
    finally:
        lock.close()
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, out
    assert f"waiting for the merge (pid {os.getpid()}) running on {dst} to end" in out
    lock, _ = lock_dst(dst)  # an unsharded run
    try:
        done = runs(command(src, dst, "--shard", "1/9"))
    finally:
        lock.close()
    assert done.returncode == 2
    assert f"error: {dst}: an unsharded prepare_data.py (pid {os.getpid()}) is running on it" in done.stdout


def test_shard_assignment_is_a_hash_of_the_relative_path_not_the_listing_order(tmp_path):
    src = tmp_path / "src"
    names = [f"train/{c}{i}_000000_000010.mp4" for c in "abc" for i in range(4)]
    sources = [Source(n, src / n, "train", "k") for n in names]
    # pinned: every machine, and every version of this code, must agree
    assert [shards.shard_of(s, src, 3) for s in sources] == [1, 1, 1, 0, 0, 1, 0, 0, 0, 2, 2, 2]
    jobs = run.plan_jobs(Listing("folders", sources, ["k"]), prepare_data.EncodeSettings())
    parts = [shards.select(jobs, src, shards.Shard(k, 3)) for k in range(3)]
    assert sorted(j.output for p in parts for j in p) == sorted(j.output for j in jobs)  # a partition
    shuffled = random.Random(0).sample(jobs, len(jobs))
    assert [sorted(j.output for j in shards.select(shuffled, src, shards.Shard(k, 3))) for k in range(3)] == [
        sorted(j.output for j in p) for p in parts]
    # the same relative paths under another root: the same shards
    other = [Source(n, tmp_path / "elsewhere" / n, "train", "k") for n in names]
    assert [shards.shard_of(s, tmp_path / "elsewhere", 3) for s in other] == [1, 1, 1, 0, 0, 1, 0, 0, 0, 2, 2, 2]


@pytest.mark.parametrize("text, message", [
    ("3/3", "--shard 3/3: K must be in 0..N-1 and N >= 1"), ("1/0", "--shard 1/0: K must be in 0..N-1 and N >= 1"),
    ("a/3", "--shard 'a/3': expected K/N, e.g. 0/8"), ("-1/3", "--shard '-1/3': expected K/N, e.g. 0/8")])
def test_bad_shard_flags(text, message):
    with pytest.raises(ValueError) as e:
        shards.parse_shard(text)
    assert str(e.value).startswith(message)
    assert shards.parse_shard(" 2/8 ") == shards.Shard(2, 8)


def test_shards_with_other_settings_are_not_merged_and_merge_needs_shards(src_and_single, tmp_path, capsys,
                                                                           monkeypatch):
    from rich.console import Console

    console = Console(width=1000)
    monkeypatch.setattr(prepare_data, "console", lambda: console)
    src, _ = src_and_single
    dst = tmp_path / "dst"
    base = [str(src), "--out", str(dst), "--workers", "1"]
    assert prepare_data.main([*base, "--height", "32", "--shard", "0/2"]) == 0
    assert prepare_data.main([*base, "--height", "48", "--shard", "1/2"]) == 1
    out = capsys.readouterr().out
    assert "error: not merged: shard 0/2 ran with other settings: settings {" in out
    assert "HINT: run it again with the same flags as the others" in out
    assert not (dst / "train.csv").exists()
    with pytest.raises(SystemExit) as e:
        prepare_data.main(["--merge", str(tmp_path / "nothing")])
    assert e.value.code == 2
    assert f"--merge {tmp_path / 'nothing'}: no shards ran there" in capsys.readouterr().out


def test_a_shard_removes_only_its_own_partial_files(tmp_path):
    """What a killed shard left, but not the temp files another shard is writing right now."""
    from pipeline import atomic

    a, b = (run.Job(Source(n, tmp_path / f"{n}.avi", "train", "k"), f"videos/train/k/{n}.webm") for n in "ab")
    mine = [atomic.temp_path(tmp_path / a.output), atomic.temp_path(run._record_path(tmp_path, a)),
            run._started_marker(tmp_path, a), atomic.temp_path(tmp_path / "train.csv")]
    others = [atomic.temp_path(tmp_path / b.output), atomic.temp_path(run._record_path(tmp_path, b)),
              run._started_marker(tmp_path, b)]
    for p in mine + others:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert run.remove_partials(tmp_path, [a]) == len(mine)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(others)
