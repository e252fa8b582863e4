"""The packet index and its memory-mapped cache: exact round trip, invalidation, damaged caches, pool workers
that die with their parent, and start-up cost linear in the videos (no per-video copies)."""

import json
import mmap
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from videos import write_video

import pipeline.packets as packets
from pipeline.packets import PacketTable, index_file, load_or_build

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def files(tmp_path):
    """Five VP9 files: different lengths, sizes and keyframe intervals."""
    spec = [(20, 96, 64, 16), (33, 96, 64, 16), (50, 96, 64, 8), (17, 128, 72, 16), (40, 96, 64, 32)]
    return [str(write_video(tmp_path / "videos" / f"v{i}.webm", n, w, h, gop))
            for i, (n, w, h, gop) in enumerate(spec)]


def assert_same(ix, ref):
    assert (ix.codec, ix.width, ix.height, ix.fps) == (ref.codec, ref.width, ref.height, ref.fps)
    for field in ("offsets", "sizes", "keyframes"):
        np.testing.assert_array_equal(getattr(ix, field), getattr(ref, field))
    assert (ix.offsets.dtype, ix.sizes.dtype, ix.keyframes.dtype) == (np.int64, np.int32, bool)


def mapped(a: np.ndarray) -> bool:
    """True when `a` is a read-only view of a memory-mapped file (not a copy)."""
    base = a
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return isinstance(base, mmap.mmap) and not a.flags.writeable


def forbid_indexing(monkeypatch, bad_files=()):
    """Fail when a file is indexed again, except the bad ones (never cached)."""

    def fail(path):
        if path in bad_files:
            return index_file(path)
        raise AssertionError(f"re-indexed {path}")

    monkeypatch.setattr(packets, "index_file", fail)


def record_indexing(monkeypatch) -> list[str]:
    calls = []

    def record(path):
        calls.append(path)
        return index_file(path)

    monkeypatch.setattr(packets, "index_file", record)
    return calls


def test_cache_round_trips_exactly(files, tmp_path, monkeypatch):
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"not a video")
    request = files + [str(broken), files[2]]  # a bad file, and a file listed twice (segments of one video)
    fresh = {f: index_file(f) for f in files}
    cache = tmp_path / "cache" / "packets.idx"
    built, bad = load_or_build(request, cache, progress=False, workers=1)
    forbid_indexing(monkeypatch, bad_files=[str(broken)])
    cached, bad_again = load_or_build(request, cache, progress=False, workers=1)
    assert list(bad) == list(bad_again) == [str(broken)]
    for table in (built, cached):
        assert len(table) == len(request)
        for row, f in enumerate(request):
            if f == str(broken):
                assert table.count[row] == 0
            else:
                assert_same(table.video(row), fresh[f])
        assert all(mapped(getattr(table, c)) for c in PacketTable.PACKET_COLUMNS)
    assert sorted(p.name for p in cache.parent.iterdir()) == ["packets.idx", "packets.idx.lock"]  # no temp file


def test_take_and_concat_keep_every_row_exact(files):
    videos = [index_file(f) for f in files]
    table = PacketTable.from_videos(videos)
    rows = [3, 0, 0, 4, -1, 2]
    picked = table.take(rows)
    assert list(picked.count) == [len(videos[r]) if r >= 0 else 0 for r in rows]
    assert picked.offsets is table.offsets  # per-video columns copied, packet arrays shared
    both = PacketTable.concat([table.take([1, 2, 3]), PacketTable.from_videos(videos[:2]), table.take([4, 0])])
    expected = [1, 2, 3, 0, 1, 4, 0]
    assert len(both) == len(expected) and len(both.offsets) == sum(len(videos[r]) for r in expected)
    for row, r in enumerate(expected):
        assert_same(both.video(row), videos[r])
    for row, r in enumerate(rows):
        if r >= 0:
            assert_same(picked.video(row), videos[r])


def test_parallel_indexing_equals_sequential_and_reports_bad_files(files, tmp_path):
    broken = tmp_path / "broken.webm"
    broken.write_bytes(b"not a video")
    request = files + [str(broken), str(tmp_path / "missing.webm")]
    seq, seq_bad = load_or_build(request, None, progress=False, workers=1)
    par, par_bad = load_or_build(request, tmp_path / "packets.idx", progress=False, workers=2)
    assert seq_bad == par_bad and list(par_bad) == [str(tmp_path / "missing.webm"), str(broken)]
    assert par_bad[str(tmp_path / "missing.webm")] == "file not found"
    assert par_bad[str(broken)].startswith("unreadable")
    for row in range(len(files)):
        assert_same(par.video(row), seq.video(row))
    assert list(par.count[-2:]) == list(seq.count[-2:]) == [0, 0]


def test_changed_files_are_reindexed(files, tmp_path, monkeypatch):
    cache = tmp_path / "packets.idx"
    load_or_build(files, cache, progress=False, workers=1)
    calls = record_indexing(monkeypatch)
    load_or_build(files, cache, progress=False, workers=1)
    assert calls == []
    st = os.stat(files[0])
    os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # mtime only
    load_or_build(files, cache, progress=False, workers=1)
    assert calls == [files[0]]
    st = os.stat(files[1])
    write_video(Path(files[1]), 45)  # another length: another size; the old mtime put back
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    calls.clear()
    table, bad = load_or_build(files, cache, progress=False, workers=1)
    assert calls == [files[1]] and not bad
    assert table.count[1] == 45
    for row, f in enumerate(files):
        assert_same(table.video(row), index_file(f))
    calls.clear()
    load_or_build(files, cache, progress=False, workers=1)
    assert calls == []


def test_bad_files_are_not_cached_and_cost_no_rewrite(files, tmp_path):
    victim = tmp_path / "later.webm"
    victim.write_bytes(b"not yet a video")
    request = files + [str(victim)]
    cache = tmp_path / "packets.idx"
    _, bad = load_or_build(request, cache, progress=False, workers=1)
    assert list(bad) == [str(victim)]
    inode = os.stat(cache).st_ino
    _, bad = load_or_build(request, cache, progress=False, workers=1)
    assert list(bad) == [str(victim)] and os.stat(cache).st_ino == inode  # indexed again, cache not rewritten
    write_video(victim, 24)  # fixed: picked up
    table, bad = load_or_build(request, cache, progress=False, workers=1)
    assert not bad and table.count[-1] == 24 and os.stat(cache).st_ino != inode


def damage(cache: Path, how: str) -> None:
    raw = cache.read_bytes()
    if how == "truncated":
        cache.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        cache.write_bytes(b"")
    elif how == "garbage":
        cache.write_bytes(np.random.default_rng(0).integers(0, 256, len(raw), dtype=np.uint8).tobytes())
    elif how == "header":
        cache.write_bytes(raw[:16] + b"#" * 20 + raw[36:])
    elif how == "version":
        cache.write_bytes(raw[:6] + b"\x00\x01" + raw[8:])
    elif how == "ranges":  # well-formed, but the first video's packets would run past the packet arrays
        (n,) = struct.unpack_from("<Q", raw, 8)
        _, _, offset = json.loads(raw[16 : 16 + n])["arrays"]["count"]
        at = -(-(16 + n) // 64) * 64 + offset  # arrays start 64-byte aligned after the header
        cache.write_bytes(raw[:at] + np.int64(10**6).tobytes() + raw[at + 8 :])


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "header", "version", "ranges"])
def test_damaged_cache_is_rebuilt(files, tmp_path, monkeypatch, how):
    cache = tmp_path / "packets.idx"
    load_or_build(files, cache, progress=False, workers=1)
    damage(cache, how)
    assert packets._read_cache(cache) is None
    calls = record_indexing(monkeypatch)
    table, bad = load_or_build(files, cache, progress=False, workers=1)
    assert sorted(calls) == sorted(files) and not bad
    for row, f in enumerate(files):
        assert_same(table.video(row), index_file(f))
    assert packets._read_cache(cache) is not None


def test_20k_cached_videos_load_without_per_video_copies(tmp_path, monkeypatch):
    """Start-up over a cached index is linear and copies no packet arrays: 20k videos x 300 packets (78 MB of
    packet data in the cache file) load with a traced-allocation peak of a few MB, all packet arrays mapped."""
    n, p = 20_000, 300
    src = tmp_path / "src.webm"
    src.write_bytes(b"x" * 100)
    folder = tmp_path / "videos"
    folder.mkdir()
    files = [str(folder / f"v{i:05d}.webm") for i in range(n)]
    for f in files:
        os.link(src, f)  # cheap files with real stat keys
    total = n * p
    table = PacketTable(
        ("vp9",), codec=np.zeros(n, np.uint8), width=np.full(n, 640, np.int32),
        height=np.full(n, 360, np.int32), fps=np.full(n, 25.0), first=np.arange(n, dtype=np.int64) * p, count=np.full(n, p, np.int64),
        offsets=np.arange(total, dtype=np.int64) * 7, sizes=(np.arange(total) % 1000).astype(np.int32),
        keyframes=np.tile(np.arange(p) % 16 == 0, n),
    )  # fmt: skip
    cache = tmp_path / "packets.idx"
    packets._write_cache(cache, [table], files, packets._stat_keys(files))
    del table
    forbid_indexing(monkeypatch)
    tracemalloc.start()
    t0 = time.perf_counter()
    out, bad = load_or_build(files, cache, progress=False, workers=1)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert not bad and len(out) == n
    assert all(mapped(getattr(out, c)) and len(getattr(out, c)) == total for c in PacketTable.PACKET_COLUMNS)
    assert peak < 16 * 2**20, f"{peak / 2**20:.1f} MB traced (packet data: {total * 13 / 2**20:.0f} MB)"
    assert seconds < 10  # the quadratic npz reader needed minutes here; this takes a fraction of a second
    ix = out.video(12_345)
    np.testing.assert_array_equal(ix.offsets, np.arange(12_345 * p, 12_346 * p) * 7)
    assert ix.keyframe_at_or_before(40) == 32 and len(ix) == p


# ---- pool workers -----------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux only")
def test_pool_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from pipeline.packets import _worker_pool

        def task():
            os.write(1, b"%d\\n" % os.getpid())  # one write: the two workers' lines never interleave
            time.sleep(120)

        if __name__ == "__main__":
            pool = _worker_pool(2)
            for _ in range(2):
                pool.submit(task)
            time.sleep(120)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    workers = []
    try:
        workers = [int(parent.stdout.readline()) for _ in range(2)]  # both workers are running a task
        parent.send_signal(signal.SIGKILL)  # like the OOM killer: no clean-up code runs in the parent
        parent.wait()
        deadline = time.monotonic() + 10
        while any(map(_alive, workers)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(map(_alive, workers))
    finally:
        parent.kill()
        for pid in workers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_cancelled_indexing_kills_its_workers(files, tmp_path, monkeypatch):
    many = [str(tmp_path / f"link{i}.webm") for i in range(48)]
    for i, f in enumerate(many):
        os.link(files[i % len(files)], f)
    real_pool, pools, workers = packets._worker_pool, [], []
    monkeypatch.setattr(packets, "_worker_pool", lambda n: pools.append(real_pool(n)) or pools[-1])

    def interrupted(pairs, **kw):  # Ctrl-C when the first result comes in
        for pair in pairs:
            workers.extend(pools[0]._processes.values())
            yield pair
            raise KeyboardInterrupt

    import rich.progress

    monkeypatch.setattr(rich.progress, "track", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_or_build(many, None, progress=True, workers=2)
    assert len(workers) == 2
    assert [w.exitcode for w in workers] == [-signal.SIGKILL] * 2  # killed, not left to finish their chunks
