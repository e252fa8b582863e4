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

import pipeline.index.build as build
from pipeline.index.build import index_file, load_or_build
from pipeline.index.cache import read_cache, stat_keys, write_cache
from pipeline.index.table import PacketTable

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

    monkeypatch.setattr(build, "index_file", fail)


def record_indexing(monkeypatch) -> list[str]:
    calls = []

    def record(path):
        calls.append(path)
        return index_file(path)

    monkeypatch.setattr(build, "index_file", record)
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
    assert read_cache(cache) is None
    calls = record_indexing(monkeypatch)
    table, bad = load_or_build(files, cache, progress=False, workers=1)
    assert sorted(calls) == sorted(files) and not bad
    for row, f in enumerate(files):
        assert_same(table.video(row), index_file(f))
    assert read_cache(cache) is not None


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
    write_cache(cache, [table], files, stat_keys(files))
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
        from pipeline.index.build import _worker_pool

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
    real_pool, pools, workers = build._worker_pool, [], []
    monkeypatch.setattr(build, "_worker_pool", lambda n: pools.append(real_pool(n)) or pools[-1])

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


# ---- what the index reads from the codec headers (pipeline/headers.py) -------------------------------------------


def test_shown_frames_reads_vp9_and_vp8_frame_headers():
    from videos import vp9_superframe

    from pipeline.headers import shown_frames, vp9_frames

    key, hidden_key, inter, existing = b"\x82\x49\x83", b"\x80\x49\x83", b"\x86\x00", b"\x88"
    assert [shown_frames("vp9", f) for f in (key, hidden_key, inter, existing)] == [1, 0, 1, 1]
    assert shown_frames("vp9", b"\x84\x00") == 0  # an inter frame with show_frame 0 (an alt-ref)
    assert shown_frames("vp9", b"\xb1") == 1  # profile 3 (a reserved bit first): show_frame is bit 0
    assert shown_frames("vp9", b"\xb4") == 1 and shown_frames("vp9", b"\xb0") == 0  # its show_existing_frame, none
    assert shown_frames("vp9", b"\x42") == 0 and shown_frames("vp9", b"") == 0  # no frame_marker: no frame
    packed = vp9_superframe([hidden_key, existing])
    assert vp9_frames(packed) == [hidden_key, existing] and shown_frames("vp9", packed) == 1
    assert shown_frames("vp9", vp9_superframe([b"\x84\x00", inter, b"\x84\x01"])) == 1
    assert shown_frames("vp9", vp9_superframe([hidden_key, b"\x84\x00"])) == 0
    bad_index = packed[:-2] + b"\xff" + packed[-1:]  # sizes past the data: the packet is one frame after all
    assert vp9_frames(bad_index) == [bad_index]
    assert [shown_frames("vp8", bytes([b, 0, 0])) for b in (0x10, 0x00, 0x11, 0x01)] == [1, 0, 1, 0]
    assert shown_frames("h264", b"\x00\x00\x00\x01\x65") == 1


@pytest.mark.parametrize("packed", [False, True])
def test_hidden_frames_in_packets_of_their_own_are_counted(tmp_path, packed):
    """A VP9 IVF with two keyframes hidden and shown by show_existing_frame packets: stored apart, 42 packets of
    which 2 show no frame; packed in superframes (FFmpeg's way), 40 packets showing one frame each. PyAV shows
    the same 40 frames in order from both. The counts survive the cache."""
    import av
    from videos import decode_code, write_hidden_frame_ivf

    path = write_hidden_frame_ivf(tmp_path / "v.ivf", 40, hide=[8, 24], packed=packed)
    ix = index_file(str(path))
    assert (len(ix), ix.shown, ix.odd_packets) == ((40, 40, 0) if packed else (42, 40, 2))
    assert list(np.flatnonzero(ix.keyframes)) == ([0, 8, 16, 24, 32] if packed else [0, 8, 17, 25, 34])
    with av.open(str(path)) as c:
        codes = [int(decode_code(f.to_ndarray(format="rgb24")[..., 2].mean())) for f in c.decode(video=0)]
    assert codes == list(np.arange(40) % 32)
    cache = tmp_path / "packets.idx"
    load_or_build([str(path)], cache, progress=False, workers=1)
    table, _ = load_or_build([str(path)], cache, progress=False, workers=1)
    got = table.video(0)
    assert (got.shown, got.odd_packets, table.shown[0], table.odd_packets[0]) == (ix.shown, ix.odd_packets) * 2


def test_prepared_vp9_has_one_shown_frame_per_packet(files):
    for f in files:
        ix = index_file(f)
        assert (ix.shown, ix.odd_packets, ix.reorder, ix.bit_depth, ix.chroma) == (len(ix), 0, 0, 8, 1)


class BitWriter:
    """MSB-first bits -> bytes, with Exp-Golomb codes: for hand-made H.264 parameter sets."""

    def __init__(self):
        self.bits = ""

    def u(self, n: int, value: int) -> "BitWriter":
        self.bits += format(value, f"0{n}b") if n else ""
        return self

    def ue(self, value: int) -> "BitWriter":
        code = format(value + 1, "b")
        self.bits += "0" * (len(code) - 1) + code
        return self

    def nal(self, header: int) -> bytes:
        bits = self.bits + "1"  # rbsp_stop_one_bit, then zeros to the byte
        bits += "0" * (-len(bits) % 8)
        return bytes([header]) + int(bits, 2).to_bytes(len(bits) // 8, "big")


def h264_sps(profile: int = 66, constraints: int = 0, vui: str = "none", reorder: int = 0) -> bytes:
    """An H.264 SPS NAL unit (352x288, POC type 2) whose VUI is absent ("none"), present without
    bitstream_restriction ("no-restriction"), or with timing info, NAL HRD parameters and bitstream_restriction
    declaring `reorder` ("restriction")."""
    w = BitWriter().u(8, profile).u(8, constraints).u(8, 30).ue(0)
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135):
        w.ue(1).ue(0).ue(0).u(1, 0).u(1, 1)  # 4:2:0, 8-bit, no bypass; scaling matrix present:
        for i in range(8):
            w.u(1, int(i == 0))
            if i == 0:  # one 4x4 list: delta_scale -8 (se(-8) = ue(16)) makes nextScale 0, which ends the list
                w.ue(16)
    w.ue(0).ue(2).ue(1).u(1, 0).ue(21).ue(17).u(1, 1).u(1, 1).u(1, 0)  # ... frame_mbs_only, direct_8x8, no crop
    if vui == "none":
        return w.u(1, 0).nal(0x67)
    w.u(1, 1).u(1, 1).u(8, 255).u(16, 1).u(16, 1)  # aspect_ratio_info: Extended_SAR 1:1
    w.u(1, 0).u(1, 1).u(3, 5).u(1, 0).u(1, 1).u(24, 0x010101)  # no overscan; video signal type with colour
    w.u(1, 0).u(1, 1).u(32, 1).u(32, 50).u(1, 1)  # no chroma loc; timing info
    w.u(1, 1).ue(0).u(4, 0).u(4, 0).ue(999).ue(999).u(1, 0).u(20, 0)  # NAL HRD, one CPB
    w.u(1, 0).u(1, 0).u(1, 0)  # no VCL HRD; low_delay_hrd_flag; pic_struct_present_flag
    if vui == "no-restriction":
        return w.u(1, 0).nal(0x67)
    return w.u(1, 1).u(1, 1).ue(2).ue(1).ue(16).ue(16).ue(reorder).ue(reorder + 1).nal(0x67)


def test_h264_sps_reorder_depth_by_the_spec():
    from pipeline.headers import REORDER_UNKNOWN, h264_reorder, rbsp, reorder_depth

    assert h264_reorder(h264_sps(vui="restriction", reorder=0)) == 0
    assert h264_reorder(h264_sps(vui="restriction", reorder=3)) == 3
    assert h264_reorder(h264_sps(profile=100, vui="restriction", reorder=2)) == 2  # past a scaling list
    assert h264_reorder(h264_sps(vui="none")) == REORDER_UNKNOWN  # the spec infers MaxDpbFrames
    assert h264_reorder(h264_sps(vui="no-restriction")) == REORDER_UNKNOWN
    assert h264_reorder(h264_sps(profile=100, constraints=0x10, vui="none")) == 0  # intra profile, constraint 3
    assert rbsp(b"\x00\x00\x03\x01\x00\x00\x03\x00\x03") == b"\x00\x00\x01\x00\x00\x00\x03"
    with pytest.raises(ValueError, match="ends early"):
        h264_reorder(h264_sps(vui="restriction")[:12])
    sps = h264_sps(vui="restriction", reorder=1)
    assert reorder_depth("h264", [b"\x06\x05", sps]) == 1  # the first SPS among the NAL units
    assert reorder_depth("h264", [b"\x06\x05"]) == REORDER_UNKNOWN  # none
    assert reorder_depth("h264", [sps[:6]]) == REORDER_UNKNOWN  # cut short
    assert reorder_depth("vp9", []) == 0 and reorder_depth("mpeg4", []) == REORDER_UNKNOWN


def ffmpeg_trace(path: str) -> list[str]:
    """FFmpeg's own reading of the stream's headers (the trace_headers bitstream filter), one element a line:
    '<bit position> <name> <bits> = <value>'."""
    import av
    import av.logging
    from av.bitstream import BitStreamFilterContext

    av.logging.set_level(av.logging.TRACE)
    try:
        with av.logging.Capture() as logs, av.open(path) as c:
            st = c.streams.video[0]
            f = BitStreamFilterContext("trace_headers", st)
            for p in c.demux(st):
                f.filter(p)
                break
    finally:
        av.logging.set_level(None)
    return [" ".join(m.split()) for _, name, m in logs if name == "trace_headers"]


def traced(lines: list[str], name: str) -> tuple[int, int]:
    """(bit position, value) of the first element `name` in ffmpeg_trace's lines."""
    line = next(x for x in lines if x.split()[1:2] == [name])
    return int(line.split()[0]), int(line.split()[-1])


@pytest.mark.parametrize(("codec", "bframes", "reorder"), [("h264", 0, 0), ("h264", 1, 1), ("h264", 2, 2),
                                                           ("hevc", 0, 0), ("hevc", 2, 2)])
def test_reorder_depth_of_real_x264_and_x265_streams(tmp_path, codec, bframes, reorder):
    """The index's reorder depth equals what FFmpeg reads from the same SPS (trace_headers) and its decoder's
    reorder_depth (has_b_frames); `reordered` says whether B-frames were used."""
    import av
    from videos import write_pattern

    path = str(write_pattern(tmp_path / "v.mp4", 24, codec, bframes=bframes))
    ix = index_file(path)
    name = "max_num_reorder_frames" if codec == "h264" else "sps_max_num_reorder_pics[0]"
    assert (ix.reorder, ix.reordered) == (reorder, bframes > 0)
    assert traced(ffmpeg_trace(path), name)[1] == reorder
    with av.open(path) as c:
        assert c.streams.video[0].codec_context.reorder_depth == reorder


def test_h264_without_a_declared_reorder_depth(tmp_path):
    """x264 output whose SPS has its bitstream_restriction_flag cleared (the bit FFmpeg's trace_headers places;
    the file keeps its size): the stream no longer says how many frames wait for reordering, so the index
    records REORDER_UNKNOWN; the frames decode as before."""
    import av
    from videos import write_pattern

    from pipeline.headers import REORDER_UNKNOWN

    path = write_pattern(tmp_path / "v.mp4", 24, "h264")
    flip_h264_bitstream_restriction(path)
    assert traced(ffmpeg_trace(str(path)), "bitstream_restriction_flag")[1] == 0
    assert index_file(str(path)).reorder == REORDER_UNKNOWN
    with av.open(str(path)) as c:
        assert len(list(c.decode(video=0))) == 24


def flip_h264_bitstream_restriction(path: Path) -> None:
    """End the VUI of an x264 MP4's SPS at bitstream_restriction_flag = 0, in place: the SPS keeps its stored
    length (zero bytes after its stop bit, which FFmpeg drops as trailing zeros), so the MP4 does not change
    shape. trace_headers gives the flag's bit position in the NAL unit without emulation prevention bytes."""
    from pipeline.headers import rbsp

    pos, value = traced(ffmpeg_trace(str(path)), "bitstream_restriction_flag")
    assert value == 1
    raw = bytearray(path.read_bytes())
    avcc = index_file(str(path)).extradata  # version, profile, compatibility, level, length size, SPS count,
    sps = avcc[8:8 + int.from_bytes(avcc[6:8], "big")]  # then the first SPS after its 16-bit length
    assert raw.count(sps) == 1
    bits = "".join(format(b, "08b") for b in rbsp(sps))
    assert bits[pos] == "1"
    bits = bits[:pos] + "01"  # the flag cleared, then rbsp_stop_one_bit
    bits += "0" * (-len(bits) % 8)
    new, zeros = bytearray(), 0
    for b in int(bits, 2).to_bytes(len(bits) // 8, "big"):  # escaped again: 00 00 0x -> 00 00 03 0x
        if zeros >= 2 and b <= 3:
            new.append(3)
            zeros = 0
        new.append(b)
        zeros = zeros + 1 if b == 0 else 0
    assert len(new) <= len(sps)
    at = raw.find(sps)
    raw[at:at + len(sps)] = bytes(new) + bytes(len(sps) - len(new))
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(("encoder", "pix_fmt", "layout"), [
    ("libvpx-vp9", "yuv420p", (8, 1)), ("libvpx-vp9", "yuv444p", (8, 3)), ("libx264", "yuv422p", (8, 2)),
    ("libx265", "yuv420p10le", (10, 1)),
])  # fmt: skip
def test_bit_depth_and_chroma_format_are_indexed(tmp_path, encoder, pix_fmt, layout):
    import av
    from videos import frame_rgb

    from pipeline.headers import pixel_layout

    path = tmp_path / f"v.{'webm' if 'vpx' in encoder else 'mp4'}"
    with av.open(str(path), "w") as c:
        s = c.add_stream(encoder, rate=25, options={"x265-params": "log-level=error"} if encoder == "libx265" else {})
        s.width, s.height, s.pix_fmt = 64, 48, pix_fmt
        for i in range(4):
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame_rgb(i, 64, 48), format="rgb24").reformat(format=pix_fmt)))
        c.mux(s.encode())
    ix = index_file(str(path))
    assert (ix.bit_depth, ix.chroma) == layout == pixel_layout(pix_fmt)
    assert [pixel_layout(f) for f in ("yuvj420p", "gray", "gray10le", "rgb24", "yuv411p", "nonsense")] == [
        (8, 1), (8, 0), (10, 0), (8, 255), (8, 255), (0, 255)]
