"""prepare_data.py stopped mid-run, as real processes: Ctrl-C, SIGTERM, kill -9, and a second run on the same DST.

Each test runs the command line in its own process group (as a terminal's foreground job) and finds the worker
processes as the main process's children in /proc. Sizes: 12 short videos take ~5 s with 2 workers on 2 cores.
(test_prepare.py has the kill -9 of the whole process group.)

On a loaded CI machine: waits for something to happen poll with deadlines far above the time it takes (they end
as soon as it happens), polls are light (every 50 ms: the workers need the CPU), and the one bound on speed, from
the signal to the exit, scales with the run's own start-up time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prepare import run
from prepare.sample import write_video
from prepare.transcode import count_frames

ROOT = Path(__file__).resolve().parent.parent
LENGTHS = (48, 64, 80)  # frames of the source videos, in turn
N_VIDEOS = 12
EMPTY = "v00_empty"  # a source rejected at once ("empty file"): a finished job without a manifest row
DONE_LINE = re.compile(r"^interrupted: (\d+) of (\d+) done; run the same command again to finish$", re.M)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; Linux only")


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    """N_VIDEOS small VP9 videos (copies of 3 lengths) + 1 empty file, all in train/k."""
    root = tmp_path_factory.mktemp("src")
    folder = root / "train" / "k"
    folder.mkdir(parents=True)
    x = np.arange(160, dtype=np.int64)[None, :, None]
    originals = []
    for n in LENGTHS:
        frames = np.stack([np.broadcast_to((x * 3 + 7 * i) % 256, (120, 160, 3)) for i in range(n)])
        originals.append(root / f"{n}.webm")
        write_video(originals[-1], frames.astype(np.uint8), 25, "libvpx-vp9")
    for i in range(N_VIDEOS):
        shutil.copyfile(originals[i % len(LENGTHS)], folder / f"v{i:02d}.webm")
    (folder / f"{EMPTY}.mp4").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def long_src(src, tmp_path_factory) -> Path:
    """src's three videos as 300 sources (hard links): a run that no machine finishes in the second or so a test
    waits (src's 13 jobs take about that long on 2 cores)."""
    folder = tmp_path_factory.mktemp("long_src") / "train" / "k"
    folder.mkdir(parents=True)
    for i in range(300):
        os.link(src / f"{LENGTHS[i % len(LENGTHS)]}.webm", folder / f"v{i:03d}.webm")
    return folder.parent.parent


def expected_frames(video_id: str) -> int:
    return LENGTHS[int(video_id[1:]) % len(LENGTHS)]


def command(src: Path, dst: Path) -> list[str]:
    return [sys.executable, str(ROOT / "prepare_data.py"), str(src), "--out", str(dst), "--workers", "2",
            "--height", "120"]


def start(src: Path, dst: Path) -> subprocess.Popen:
    proc = subprocess.Popen(command(src, dst), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group, like a job in a terminal
    proc.started_at = time.monotonic()
    return proc


def children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live children of pid (workers and multiprocessing's resource tracker)."""
    found = {}
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text()
            if d.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue  # gone meanwhile
    return found


def alive(pid: int) -> bool:
    """True unless pid has exited (a zombie waiting for its new parent to reap it has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids, timeout_s: float = 10) -> list[int]:
    """The pids still alive after timeout_s (returns as soon as none is)."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


def open_files(pid: int) -> list[str]:
    """What pid's descriptors point to (a descriptor closed while they are read is skipped)."""
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with suppress(OSError):
            targets.append(os.readlink(fd))
    return targets


def finished_records(dst: Path) -> dict[str, dict]:
    """{video_id: record} of the jobs whose outcome is recorded in DST/.prepare."""
    recs = {}
    for p in (dst / run.RECORDS).rglob("*.json"):
        if not p.name.startswith("."):
            recs[p.name.rsplit(".", 2)[0]] = json.loads(p.read_text())
    return recs


def run_until_a_video_is_done(proc: subprocess.Popen, dst: Path) -> dict[int, str]:
    """Wait until the first video (not the empty file) is recorded; return the children seen meanwhile."""
    seen, deadline = {}, time.monotonic() + 120
    while not any(r["info"] for r in finished_records(dst).values()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        seen |= children(proc.pid)
        time.sleep(0.05)  # workers live for the whole run: no need to look more often
    return seen | children(proc.pid)


def workers_of(seen: dict[int, str]) -> list[int]:
    workers = [pid for pid, cmd in seen.items() if "spawn_main" in cmd]
    assert len(workers) == 2, seen
    return workers


def read_manifest(dst: Path) -> pd.DataFrame:
    return pd.read_csv(dst / "train.csv", dtype={"video_id": str})


def check_complete(dst: Path) -> None:
    """All videos in the manifest once, with the right frame count, decodable; the empty file rejected."""
    df = read_manifest(dst)
    assert df["video_id"].tolist() == [f"v{i:02d}" for i in range(N_VIDEOS)]
    assert df["num_frames"].tolist() == [expected_frames(v) for v in df["video_id"]]
    assert [count_frames(dst / p)[0] for p in df["path"]] == df["num_frames"].tolist()
    assert [Path(s).stem for s in pd.read_csv(dst / "rejected.csv")["source"]] == [EMPTY]
    assert not [p for p in dst.rglob(".*") if "partial" in p.name or p.name.endswith(".started")]


def interrupt(proc: subprocess.Popen, dst: Path, sig: int, whole_group: bool) -> tuple[int, int, str]:
    """Send sig once a video is done; check a clean and prompt exit; return (n done, m jobs, stdout)."""
    seen = run_until_a_video_is_done(proc, dst)
    workers_of(seen)
    t0 = time.monotonic()
    if whole_group:
        os.killpg(proc.pid, sig)  # what Ctrl-C in a terminal does
    else:
        proc.send_signal(sig)  # what kill PID (or a scheduler) does
    out, err = proc.communicate(timeout=60)  # until every process holding its stdout has exited
    seconds = time.monotonic() - t0
    assert proc.returncode == 128 + sig, out + err
    # Prompt: 3 s on an idle machine (it takes < 1 s), more on one so loaded that the run took longer than 1.5 s
    # to start and finish its first video (the exit does less work than that: no workers to start).
    startup = t0 - proc.started_at
    assert seconds < max(3, 2 * startup), f"{seconds:.1f} s from the signal to the exit ({startup:.1f} s start-up)"
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err, err
    assert wait_gone(seen) == []  # the workers and multiprocessing's resource tracker
    (n, m), = [tuple(map(int, g)) for g in DONE_LINE.findall(out)]
    assert m == N_VIDEOS + 1 and 1 <= n < m, out
    return n, m, out


def check_manifests_list_the_finished(dst: Path, n: int) -> None:
    """The manifests list exactly the jobs finished (recorded): videos as rows, the empty file as rejected."""
    records = finished_records(dst)
    assert len(records) == n
    df = read_manifest(dst)
    assert sorted(df["video_id"]) == sorted(v for v, r in records.items() if r["info"])
    assert df["num_frames"].tolist() == [expected_frames(v) for v in df["video_id"]]
    assert [count_frames(dst / p)[0] for p in df["path"]] == df["num_frames"].tolist()
    assert len(pd.read_csv(dst / "rejected.csv")) == (EMPTY in records)
    report = json.loads((dst / "prepare_report.json").read_text())
    assert report["interrupted"] is True and report["rows"] == {"train": len(df)}
    v = report["videos"]  # every job is listed, the finished ones are counted
    assert v["listed"] == N_VIDEOS + 1 and v["prepared"] + v["reused"] + v["rejected"] == n


def test_ctrl_c_stops_the_workers_writes_manifests_of_the_finished_and_a_rerun_finishes(src, tmp_path):
    dst = tmp_path / "dst"
    n, m, _ = interrupt(start(src, dst), dst, signal.SIGINT, whole_group=True)
    check_manifests_list_the_finished(dst, n)
    # The same command again does exactly the rest.
    again = subprocess.run(command(src, dst), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{n} already prepared, {m - n} to do" in " ".join(again.stdout.split())  # rich wraps at 80 columns
    check_complete(dst)
    assert json.loads((dst / "prepare_report.json").read_text())["interrupted"] is False


@pytest.mark.parametrize("whole_group", [False, True], ids=["main-process", "process-group"])
def test_sigterm_stops_like_ctrl_c(src, tmp_path, whole_group):
    dst = tmp_path / "dst"
    n, _, _ = interrupt(start(src, dst), dst, signal.SIGTERM, whole_group)
    check_manifests_list_the_finished(dst, n)


def test_ctrl_c_is_left_to_the_main_process_even_while_the_workers_start_up(long_src, tmp_path):
    dst = tmp_path / "dst"
    proc = start(long_src, dst)  # long: with src the run could end, and its workers with it, before the check
    deadline = time.monotonic() + 60
    while not (starting := [pid for pid, cmd in children(proc.pid).items() if "spawn_main" in cmd]):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.005)
    for pid in starting:  # still importing: SIGINT stays blocked there until _init_worker ignores it
        os.kill(pid, signal.SIGINT)
    time.sleep(1)
    assert [alive(pid) for pid in starting] == [True] * len(starting)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err + out and "KeyboardInterrupt" not in err, err
    assert DONE_LINE.search(out), out


def test_kill_9_of_the_main_process_takes_the_workers_with_it(src, tmp_path):
    dst = tmp_path / "dst"
    proc = start(src, dst)
    seen = run_until_a_video_is_done(proc, dst)
    workers = workers_of(seen)
    proc.kill()  # the main process only: the workers are orphaned
    proc.wait()  # not communicate(): that would wait for the workers too (they hold its stdout), forever if they live
    t0 = time.monotonic()
    assert wait_gone(workers) == [], f"workers alive {time.monotonic() - t0:.1f} s after their parent died"
    proc.communicate(timeout=60)
    lock, locked = run.lock_dst(dst)  # the lock died with the process
    lock.close()
    again = subprocess.run(command(src, dst), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    check_complete(dst)


def test_a_second_run_on_the_same_dst_exits_at_once_with_status_2(src, long_src, tmp_path):
    dst = tmp_path / "dst"
    proc = start(long_src, dst)  # long: the first run must outlast the second one's start-up (~2-3 s, more if loaded)
    workers = workers_of(run_until_a_video_is_done(proc, dst))
    lock_file = dst / run.RECORDS / run.LOCK
    assert lock_file.read_text() == f"{proc.pid}\n"
    for pid in workers:  # spawned workers must not hold the lock: it would outlive a killed parent
        assert str(lock_file) not in open_files(pid)
    second = subprocess.run(command(src, dst), cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.poll() is None, "the first run ended first: give it more work"
    assert second.returncode == 2
    assert second.stdout.splitlines()[-1] == (f"error: {dst}: another prepare_data.py (pid {proc.pid}) is running "
                                              "on it. HINT: wait for it to end, or stop it, then run again")
    assert "already prepared" not in second.stdout  # it stopped before looking at DST
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, out + err
    lock, locked = run.lock_dst(dst)
    lock.close()


def test_worker_exits_when_its_parent_dies_without_pdeathsig(tmp_path):
    """The fallback of _init_worker: a parent-pid watch (here with PR_SET_PDEATHSIG switched off again)."""
    child = ("import ctypes, os, sys, time; from prepare import run; run._init_worker(os.getppid()); "
             "ctypes.CDLL(None).prctl(run.PR_SET_PDEATHSIG, 0, 0, 0, 0); print(os.getpid(), flush=True); "
             "time.sleep(60)")
    parent = subprocess.Popen(["sh", "-c", f'"{sys.executable}" -c "{child}" & wait'], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid = int(parent.stdout.readline())
        assert alive(pid)
        parent.kill()
        parent.wait()
        assert wait_gone([pid]) == []
    finally:
        with suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)


def test_lock_is_exclusive_between_open_files_and_released_on_close(tmp_path):
    lock, locked = run.lock_dst(tmp_path)
    assert locked
    with pytest.raises(run.Busy, match=f"^{re.escape(str(tmp_path))}: another prepare_data.py \\(pid {os.getpid()}\\)"):
        run.lock_dst(tmp_path)
    lock.close()
    lock, _ = run.lock_dst(tmp_path)
    lock.close()

