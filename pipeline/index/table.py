"""Per-video packet index: where every frame's compressed payload lives in the file.

Why: DALI 2.4's CPU `fn.decoders.video` does not seek; it decodes from the first frame of the bytes it is
given (measured on DALI 2.4; benchmarks/RESULTS.md). So the DALI loader hands it only the packets from the keyframe at or before a
clip's first frame to its last frame, and the NVDEC loader feeds its decoders the same packets
(pipeline/bitstream.py cuts and wraps them). Finding those packets needs, per file: the byte offset and size
of each packet's payload and its keyframe flag, in decode order.

The index is built once with PyAV (demux only, plus decoding the first frame; `index_file`) and doubles as
the check that finds missing, truncated or undecodable files before the first training step. It also keeps,
per video, what decides whether packet k is frame k and how a decoder may be fed (pipeline/headers.py reads
them from the headers, nothing is decoded for them): the codec extradata (for H.264/HEVC in MP4: the
avcC/hvcC record with the parameter sets, which bitstream.packet_slice puts in front of a slice); whether
its frames are reordered (B-frames: presentation order differs from decode order); how many frames it shows
and how many of its packets do not show exactly one (a VP8/VP9 hidden frame stored in a packet of its own;
VP9 superframes count as one packet); the reorder depth its H.264/HEVC sequence parameter set declares; the
bit depth and chroma format of its first frame. The loaders decide from these: NVDEC refuses reordered,
odd-packet and non-8-bit-4:2:0 rows, DALI gives odd-packet rows the whole file. `load_or_build` returns it as
a `PacketTable`: per-video columns that point into flat per-packet arrays shared by all videos. Nothing is
built per video at start-up.

Cache: DST/.cache/packets-<split>.idx, keyed by (path, size, mtime_ns). It is memory-mapped, not loaded:
start-up copies the per-video columns (~60 bytes a video) and leaves the packet arrays (13 bytes a packet:
offset int64, size int32, keyframe bool; ~0.9 GB for Kinetics-400's 240k x 300 packets) in the page cache,
one copy per node for all DDP ranks, paged in only where a clip's packets are read. Extradata (a few dozen
bytes a video) is one flat byte array beside them. Layout (little-endian):
8-byte magic, u64 length of a JSON header, the header {"version", "codecs", "files", "arrays": {name:
[dtype, shape, offset]}}, then each array's bytes at data start + offset, 64-byte aligned: the per-video
arrays files (paths, UTF-8, NUL-separated), fsize, mtime and PacketTable.VIDEO_COLUMNS, the per-packet
arrays PacketTable.PACKET_COLUMNS, then extradata. One file rather than a folder of .npy files because one
file can be replaced atomically (temp file + os.replace) while other processes still read the old one
through their mappings. A cache of another version is rebuilt.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import mmap
import multiprocessing
import os
import signal
import struct
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.atomic import atomic_write
from pipeline.bitstream import parameter_sets
from pipeline.headers import CHROMA_420, pixel_layout, reorder_depth, shown_frames, split_nals
from pipeline.pools import kill_pool

CACHE_VERSION = 4  # 3: extradata and the reordered flag per video; 4: shown, odd_packets, reorder, bit_depth, chroma
CACHE_MAGIC = b"PKTIDX\x00\x04"
_ALIGN = 64
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class VideoIndex:
    """Packet table of one file, in decode order (= display order unless `reordered`).  offsets: (P,) int64
    bytes; sizes: (P,) int32 bytes; keyframes: (P,) bool; extradata: the codec's configuration record from
    the container (b"" when none); reordered: presentation order differs from decode order (B-frames);
    shown: frames the file shows (-1: one per packet, P); odd_packets: packets that do not show exactly one
    frame (VP8/VP9 hidden frames stored alone; then packet k is not frame k); reorder: frames a decoder may
    hold back, from the H.264/HEVC SPS (0 for VP8/VP9; headers.REORDER_UNKNOWN when the stream does not say);
    bit_depth, chroma: the first frame's bits per sample and chroma code (headers.CHROMA_*).
    PacketTable.video() gives one as views into the shared arrays (no copy)."""

    codec: str
    width: int
    height: int
    fps: float
    offsets: np.ndarray
    sizes: np.ndarray
    keyframes: np.ndarray
    extradata: bytes = b""
    reordered: bool = False
    shown: int = -1
    odd_packets: int = 0
    reorder: int = 0
    bit_depth: int = 8
    chroma: int = CHROMA_420

    def __post_init__(self) -> None:
        if self.shown < 0:
            object.__setattr__(self, "shown", len(self.offsets))

    def __len__(self) -> int:
        return len(self.offsets)

    def keyframe_at_or_before(self, frame: int) -> int:
        keys = np.flatnonzero(self.keyframes[: frame + 1])
        return int(keys[-1]) if len(keys) else 0


@dataclass(frozen=True)
class PacketTable:
    """Packet indexes of V videos: row r's packets are offsets/sizes/keyframes[first[r] : first[r] + count[r]].

    Per video: codec (V,) uint8 index into `codecs`; width, height (V,) int32 pixels; fps (V,) float64;
    first, count (V,) int64 packets; extra_first (V,) int64, extra_size (V,) int32: the video's extradata
    is extradata[extra_first : extra_first + extra_size]; reordered (V,) bool; shown (V,) int64 frames the
    file shows; odd_packets (V,) int32; reorder (V,) int8; bit_depth, chroma (V,) uint8 (VideoIndex says what
    each means). Per packet, all videos end to end: offsets (P,) int64 payload byte offsets in the file; sizes
    (P,) int32 payload bytes; keyframes (P,) bool. extradata (E,) uint8, all videos end to end. Read from the
    cache, the packet arrays and extradata are read-only views of the memory-mapped file. The columns after
    keyframes may be left out (None): no extradata, nothing reordered, one shown frame per packet, 8-bit
    4:2:0.
    """

    VIDEO_COLUMNS: ClassVar[tuple[str, ...]] = ("codec", "width", "height", "fps", "first", "count",
                                                "extra_first", "extra_size", "reordered", "shown", "odd_packets",
                                                "reorder", "bit_depth", "chroma")
    PACKET_COLUMNS: ClassVar[tuple[str, ...]] = ("offsets", "sizes", "keyframes")
    DTYPES: ClassVar[dict[str, type]] = {
        "codec": np.uint8, "width": np.int32, "height": np.int32, "fps": np.float64, "first": np.int64,
        "count": np.int64, "extra_first": np.int64, "extra_size": np.int32, "reordered": np.bool_,
        "shown": np.int64, "odd_packets": np.int32, "reorder": np.int8, "bit_depth": np.uint8, "chroma": np.uint8,
        "offsets": np.int64, "sizes": np.int32, "keyframes": np.bool_, "extradata": np.uint8,
    }  # fmt: skip
    DEFAULTS: ClassVar[dict[str, int]] = {"extra_first": 0, "extra_size": 0, "reordered": False, "odd_packets": 0,
                                          "reorder": 0, "bit_depth": 8, "chroma": CHROMA_420}  # shown: count

    codecs: tuple[str, ...]
    codec: np.ndarray
    width: np.ndarray
    height: np.ndarray
    fps: np.ndarray
    first: np.ndarray
    count: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    keyframes: np.ndarray
    extra_first: np.ndarray | None = None
    extra_size: np.ndarray | None = None
    reordered: np.ndarray | None = None
    shown: np.ndarray | None = None
    odd_packets: np.ndarray | None = None
    reorder: np.ndarray | None = None
    bit_depth: np.ndarray | None = None
    chroma: np.ndarray | None = None
    extradata: np.ndarray | None = None

    def __post_init__(self) -> None:
        v = len(self.first)
        for c, value in self.DEFAULTS.items():
            if getattr(self, c) is None:
                object.__setattr__(self, c, np.full(v, value, self.DTYPES[c]))
        if self.shown is None:
            object.__setattr__(self, "shown", np.asarray(self.count, np.int64).copy())
        if self.extradata is None:
            object.__setattr__(self, "extradata", np.zeros(0, np.uint8))

    def __len__(self) -> int:
        return len(self.first)

    def codec_of(self, row: int) -> str:
        return self.codecs[self.codec[row]]

    def video(self, row: int) -> VideoIndex:
        """Row `row` as a VideoIndex whose arrays are views into this table's (nothing copied)."""
        a = int(self.first[row])
        b = a + int(self.count[row])
        e = int(self.extra_first[row])
        return VideoIndex(self.codec_of(row), int(self.width[row]), int(self.height[row]), float(self.fps[row]),
                          self.offsets[a:b], self.sizes[a:b], self.keyframes[a:b],
                          self.extradata[e:e + int(self.extra_size[row])].tobytes(), bool(self.reordered[row]),
                          int(self.shown[row]), int(self.odd_packets[row]), int(self.reorder[row]),
                          int(self.bit_depth[row]), int(self.chroma[row]))

    def take(self, rows: np.ndarray) -> PacketTable:
        """The table of `rows` ((R,) int, -1 = an empty row: count 0, all other columns 0). The per-video
        columns are copied (O(R)); the packet arrays are shared, not copied."""
        rows = np.asarray(rows, np.int64)
        ok = rows >= 0

        def pick(column: np.ndarray) -> np.ndarray:
            out = np.zeros(len(rows), column.dtype)
            out[ok] = column[rows[ok]]
            return out

        return replace(self, **{c: pick(getattr(self, c)) for c in self.VIDEO_COLUMNS})

    @classmethod
    def from_videos(cls, videos: list[VideoIndex]) -> PacketTable:
        """A table with one row per VideoIndex, in order (packet arrays concatenated)."""
        codecs = tuple(dict.fromkeys(v.codec for v in videos))
        count = np.array([len(v) for v in videos], np.int64)
        extra_size = np.array([len(v.extradata) for v in videos], np.int32)
        return cls(
            codecs,
            codec=np.array([codecs.index(v.codec) for v in videos], np.uint8),
            width=np.array([v.width for v in videos], np.int32),
            height=np.array([v.height for v in videos], np.int32),
            fps=np.array([v.fps for v in videos], np.float64),
            first=np.cumsum(count) - count,
            count=count,
            **{c: _concat([getattr(v, c) for v in videos], cls.DTYPES[c]) for c in cls.PACKET_COLUMNS},
            extra_first=np.cumsum(extra_size, dtype=np.int64) - extra_size,
            extra_size=extra_size,
            **{c: np.array([getattr(v, c) for v in videos], cls.DTYPES[c])
               for c in ("reordered", "shown", "odd_packets", "reorder", "bit_depth", "chroma")},
            extradata=np.frombuffer(b"".join(v.extradata for v in videos), np.uint8).copy(),
        )

    @classmethod
    def concat(cls, tables: list[PacketTable]) -> PacketTable:
        """One table with the rows of `tables` in order; the packets these rows use are copied, end to end."""
        codecs, columns, runs, extra_runs = _concat_plan(tables)
        for c in cls.PACKET_COLUMNS:
            columns[c] = _concat([getattr(t, c)[a:b] for t, a, b in runs], cls.DTYPES[c])
        columns["extradata"] = _concat([t.extradata[a:b] for t, a, b in extra_runs], np.uint8)
        return cls(codecs, **columns)

    def check(self) -> None:
        """Raise ValueError unless the columns fit together (a damaged cache is rebuilt)."""
        v, p, e = len(self.first), len(self.offsets), len(self.extradata)
        for c, dtype in self.DTYPES.items():
            a = getattr(self, c)
            shape = (v,) if c in self.VIDEO_COLUMNS else (e,) if c == "extradata" else (p,)
            if a.dtype != dtype or a.shape != shape:
                raise ValueError(f"column {c}: {a.dtype}{a.shape} does not fit {v} videos, {p} packets")
        if v and (self.codec.max() >= len(self.codecs) or self.count.min() < 1 or self.first.min() < 0
                  or (self.first + self.count).max() > p):
            raise ValueError("packet ranges or codecs out of bounds")
        if v and (self.extra_size.min() < 0 or self.extra_first.min() < 0
                  or (self.extra_first + self.extra_size).max() > e):
            raise ValueError("extradata ranges out of bounds")
        if v and (self.shown.min() < 0 or self.odd_packets.min() < 0 or (self.odd_packets > self.count).any()):
            raise ValueError("shown frames or odd packet counts out of bounds")


def _concat_plan(
    tables: list[PacketTable],
) -> tuple[tuple[str, ...], dict[str, np.ndarray], list[tuple], list[tuple]]:
    """What concatenating `tables` takes: the codec names, the per-video columns of all rows in order (`first`
    and `extra_first` placing their packets and extradata end to end), and the packet and the extradata
    ranges to copy in order, as (table, start, stop). A cache stores its rows back to back, so adjacent
    ranges are merged: keeping most rows of a cache copies a few long slices, not one per video."""
    codecs = tuple(dict.fromkeys(c for t in tables for c in t.codecs))
    count = np.concatenate([t.count for t in tables])
    extra_size = np.concatenate([t.extra_size for t in tables]).astype(np.int32)
    columns = {
        "codec": np.concatenate([np.array([codecs.index(c) for c in t.codecs], np.uint8)[t.codec]
                                 for t in tables]),
        **{c: np.concatenate([getattr(t, c) for t in tables])
           for c in ("width", "height", "fps", "reordered", "shown", "odd_packets", "reorder", "bit_depth", "chroma")},
        "first": np.cumsum(count) - count,
        "count": count,
        "extra_first": np.cumsum(extra_size, dtype=np.int64) - extra_size,
        "extra_size": extra_size,
    }
    return codecs, columns, _runs(tables, "first", "count"), _runs(tables, "extra_first", "extra_size")


def _runs(tables: list[PacketTable], first: str, count: str) -> list[tuple]:
    """The ranges [first, first + count) of every row of `tables`, in order, adjacent ones merged."""
    runs = []
    for t in tables:
        if len(t):
            start = getattr(t, first).astype(np.int64)
            end = start + getattr(t, count)
            cut = np.flatnonzero(start[1:] != end[:-1]) + 1
            starts, stops = start[np.r_[0, cut]].tolist(), end[np.r_[cut - 1, len(t) - 1]].tolist()
            runs += [(t, a, b) for a, b in zip(starts, stops, strict=True) if b > a]
    return runs


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)


class BadVideo(Exception):
    """A file that cannot be used; str() is the reason."""


def index_file(path: str) -> VideoIndex:
    """Demux `path` with PyAV and return its packet table; raise BadVideo if it is missing or broken."""
    import av  # lazy: PyAV is only needed when (re)building the index

    if not os.path.isfile(path):
        raise BadVideo("file not found")
    if os.path.getsize(path) == 0:
        raise BadVideo("empty file")
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as raw, av.open(path) as c:
            if not c.streams.video:
                raise BadVideo("no video stream")
            st = c.streams.video[0]
            codec = st.codec_context.name
            rate = st.average_rate or st.guessed_rate or 25
            extradata = bytes(st.codec_context.extradata or b"")
            offsets, sizes, keys, pts, shown = [], [], [], [], []
            first_frames: list = []
            first_payload = b""
            count_shown = codec in ("vp8", "vp9")  # other codecs: one frame per packet (an MP4 sample is one)
            for p in c.demux(st):
                if p.size == 0:  # the flush packet
                    continue
                payload = bytes(p)
                offsets.append(_payload_offset(raw, payload, p.pos))
                sizes.append(p.size)
                keys.append(bool(p.is_keyframe))
                pts.append(p.pts)
                if count_shown:
                    shown.append(shown_frames(codec, payload))  # the header bytes only, nothing decoded
                if len(sizes) == 1:  # decode the first frame: catches broken headers and codec parameters
                    first_payload = payload
                    first_frames = st.codec_context.decode(p) + st.codec_context.decode(None)
            width, height = st.codec_context.width, st.codec_context.height
    except BadVideo:
        raise
    except (OSError, ValueError, av.FFmpegError) as e:
        raise BadVideo(f"unreadable ({type(e).__name__}: {e})") from None
    if not sizes:
        raise BadVideo("no video packets")
    if not keys[0]:
        raise BadVideo("first packet is not a keyframe")
    if not first_frames:
        raise BadVideo("first frame does not decode")
    if min(offsets) < 0:
        raise BadVideo("packet payloads not found in the file (unsupported container layout)")
    if max(sizes) >= 2**31:
        raise BadVideo("a packet of 2 GiB or more")
    known = np.array([t for t in pts if t is not None], np.int64)
    reordered = bool(len(known) > 1 and (np.diff(known) <= 0).any())  # presentation order != decode order
    per_packet = np.asarray(shown, np.int64) if count_shown else np.ones(len(sizes), np.int64)
    bit_depth, chroma = pixel_layout(first_frames[0].format.name)
    return VideoIndex(codec, int(width), int(height), float(rate), np.asarray(offsets, np.int64),
                      np.asarray(sizes, np.int32), np.asarray(keys, bool), extradata, reordered,
                      shown=int(per_packet.sum()), odd_packets=int((per_packet != 1).sum()),
                      reorder=_reorder(codec, extradata, first_payload), bit_depth=bit_depth, chroma=chroma)


def _reorder(codec: str, extradata: bytes, first_payload: bytes) -> int:
    """headers.reorder_depth from the SPS in the extradata (avcC/hvcC, or Annex-B) or else in the first packet
    (streams that carry their parameter sets in band)."""
    if codec not in ("h264", "hevc"):
        return reorder_depth(codec, [])
    try:
        head, length_size = parameter_sets(codec, extradata)
    except ValueError:  # a damaged record: the packets may still carry the SPS
        head, length_size = b"", 0 if not extradata else 4
    return reorder_depth(codec, split_nals(head, 0) + split_nals(first_payload, length_size))


def _payload_offset(raw: mmap.mmap, payload: bytes, pos: int | None) -> int:
    """Byte offset of `payload` in the file. PyAV's packet.pos may point at the container's block header
    (Matroska SimpleBlock: 4 bytes before the payload), so compare bytes instead of trusting it."""
    if pos is not None and pos >= 0:
        for k in range(0, 64):
            if raw[pos + k : pos + k + len(payload)] == payload:
                return pos + k
        return raw.find(payload, pos)
    return raw.find(payload)


def _stat_keys(files: list[str]) -> np.ndarray:
    """(N, 2) int64 (size, mtime_ns) of each file; (-1, -1) where stat fails. The cache key: a file whose
    size or modification time changed is indexed again (one stat per file; ~5 us each on a local disk)."""
    keys = np.full((len(files), 2), -1, np.int64)
    for i, f in enumerate(files):
        try:
            st = os.stat(f)
        except OSError:
            continue
        keys[i] = st.st_size, st.st_mtime_ns
    return keys


def _index_or_reason(path: str) -> VideoIndex | str:
    """index_file for a worker process: the index, or the reason the file is bad."""
    try:
        return index_file(path)
    except BadVideo as e:
        return str(e)


def default_workers(n_files: int) -> int:
    """Processes for indexing n_files: one per 64 files, at most one per core (and 32); 1 = in this process."""
    return max(1, min(os.cpu_count() or 1, n_files // 64, 32))


def _die_with_parent(parent: int) -> None:
    """Pool worker initializer: have Linux SIGKILL this worker when its parent dies (PR_SET_PDEATHSIG).

    Without it, a parent killed by the OOM killer or a scheduler leaves the workers blocked on the task
    queue forever (each worker holds the queue's write end, so it never sees EOF). The signal follows the
    thread that started the worker: ProcessPoolExecutor starts spawn workers from the thread calling map(),
    which waits for them in _index_files.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the caller may already run DALI or torch threads
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_die_with_parent, initargs=(os.getpid(),))


def _index_files(
    todo: list[str], workers: int | None, progress: bool
) -> tuple[dict[str, VideoIndex], dict[str, str]]:
    """Index `todo` in `workers` processes (default: default_workers): the good ones, the bad ones' reasons."""
    good: dict[str, VideoIndex] = {}
    bad: dict[str, str] = {}
    if not todo:
        return good, bad
    workers = default_workers(len(todo)) if workers is None else workers
    pool = _worker_pool(workers) if workers > 1 else None
    try:
        if pool is not None:
            results = pool.map(_index_or_reason, todo, chunksize=16)
        else:
            results = map(_index_or_reason, todo)
        pairs = zip(todo, results, strict=True)
        if progress:
            from rich.progress import track

            pairs = track(pairs, total=len(todo), transient=True,
                          description=f"indexing {len(todo)} video(s) in {workers} process(es)")
        for f, result in pairs:
            if isinstance(result, str):
                bad[f] = result
            else:
                good[f] = result
    except BaseException:
        if pool is not None:
            kill_pool(pool)
        raise
    if pool is not None:
        pool.shutdown()
    return good, bad


def load_or_build(
    files: list[str], cache: Path | None, progress: bool = True, workers: int | None = None
) -> tuple[PacketTable, dict[str, str]]:
    """The packet table of `files` (absolute paths; row i = files[i]) and the reasons of the bad ones.

    Rows of bad files are empty (count 0). Good entries are cached in `cache`; files whose size or mtime
    changed are indexed again. Bad files are not cached, so fixing one is picked up on the next run (they
    are indexed again at every start, without rewriting the cache). Indexing costs ~15 ms per 10 s video
    (mostly opening the decoder), so large lists are indexed by `workers` processes (default:
    default_workers). Concurrent callers (DDP ranks of one node) take turns on a lock file next to the
    cache: the first indexes, the others then map the same cache file (one copy in memory per node).
    """
    if cache is None:
        return _load_or_build(files, None, progress, workers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(cache.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        except OSError:  # a file system without locks: every caller indexes for itself (slower, still correct)
            pass
        return _load_or_build(files, cache, progress, workers)


def _load_or_build(
    files: list[str], cache: Path | None, progress: bool, workers: int | None
) -> tuple[PacketTable, dict[str, str]]:
    unique = list(dict.fromkeys(files))
    keys = _stat_keys(unique)  # before indexing: a file changed meanwhile is indexed again next time
    table, cached_files, cached_keys = (_read_cache(cache) if cache is not None else None) or _empty_cache()
    row_of = {f: r for r, f in enumerate(cached_files)}  # one hash lookup per file: linear time
    rows = np.array([row_of.get(f, -1) for f in unique], np.int64)
    missing = keys[:, 0] < 0
    fresh = (rows >= 0) & ~missing
    fresh[fresh] = (cached_keys[rows[fresh]] == keys[fresh]).all(axis=1)
    bad = {unique[i]: "file not found" for i in np.flatnonzero(missing)}
    todo = np.flatnonzero(~fresh & ~missing)
    new, new_bad = _index_files([unique[i] for i in todo], workers, progress)
    bad.update(new_bad)
    if new:  # the cached rows still valid + the new ones become the new cache
        keep = np.flatnonzero(fresh)
        added = np.array([i for i in todo if unique[i] in new], np.int64)
        parts = [table.take(rows[keep]), PacketTable.from_videos([new[unique[i]] for i in added])]
        cached_files = [unique[i] for i in np.concatenate([keep, added])]
        cached_keys = keys[np.concatenate([keep, added])]
        mapped = None
        if cache is not None:
            _write_cache(cache, parts, cached_files, cached_keys)
            mapped = _read_cache(cache)  # the file's mapping, shared by the node's ranks
        if mapped is not None and mapped[1] == cached_files:  # (not if a rank without flock replaced it)
            table = mapped[0]
        else:
            table = PacketTable.concat(parts)
        row_of = {f: r for r, f in enumerate(cached_files)}
    return table.take(np.array([-1 if f in bad else row_of[f] for f in files], np.int64)), bad


def _empty_cache() -> tuple[PacketTable, list[str], np.ndarray]:
    return PacketTable.from_videos([]), [], np.zeros((0, 2), np.int64)


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def _read_cache(cache: Path) -> tuple[PacketTable, list[str], np.ndarray] | None:
    """The cached table (packet arrays memory-mapped), its files and their (size, mtime_ns) keys (V, 2);
    None when there is no cache or it is damaged or from another version (then it is rebuilt)."""
    try:
        with open(cache, "rb") as f:
            # Stays valid when the file is replaced (os.replace), which is the only way it is ever changed:
            # truncating a mapped file in place would make reads of the lost pages fault (SIGBUS).
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):  # missing, or empty (mmap refuses length 0)
        return None
    try:
        if buf[:8] != CACHE_MAGIC:
            return None
        (n,) = struct.unpack_from("<Q", buf, 8)
        head = json.loads(buf[16:16 + n])
        if head["version"] != CACHE_VERSION:
            return None
        start = _align(16 + n)
        arrays = {
            name: np.frombuffer(buf, np.dtype(dtype), int(np.prod(shape)), start + offset).reshape(shape)
            for name, (dtype, shape, offset) in head["arrays"].items()
        }  # read-only views of the mapping: nothing is copied or read yet
        files = arrays.pop("files").tobytes().decode("utf-8", "surrogateescape").split("\0")
        keys = np.stack([arrays.pop("fsize"), arrays.pop("mtime")], axis=1)  # (V, 2) int64, copied (small)
        table = PacketTable(tuple(head["codecs"]), **{c: arrays[c] for c in PacketTable.DTYPES})
        table.check()
        if not len(files) == len(table) == len(keys) == head["files"]:
            raise ValueError("row counts differ")
        return table, files, keys
    except (ValueError, KeyError, TypeError, AttributeError, struct.error):
        return None


def _write_cache(cache: Path, tables: list[PacketTable], files: list[str], keys: np.ndarray) -> None:
    """Write the rows of `tables` in order (row i: files[i], keys[i] = (size, mtime_ns)) as the cache file
    (layout: module docstring). Packets are streamed from where they are (the old cache's mapping, the newly
    indexed videos), not concatenated in memory first. Atomic: a temp file, then os.replace; processes that
    mapped the old file keep reading it, new readers get the new one."""
    codecs, columns, runs, extra_runs = _concat_plan(tables)
    video = {
        # paths as one UTF-8 blob, NUL-separated (NUL cannot occur in a path)
        "files": np.frombuffer("\0".join(files).encode("utf-8", "surrogateescape"), np.uint8),
        "fsize": keys[:, 0], "mtime": keys[:, 1], **columns,
    }  # fmt: skip
    packets = int(columns["count"].sum())
    shapes = {name: (a.dtype, a.shape) for name, a in video.items()}
    shapes.update({c: (np.dtype(PacketTable.DTYPES[c]), (packets,)) for c in PacketTable.PACKET_COLUMNS})
    shapes["extradata"] = (np.dtype(np.uint8), (int(columns["extra_size"].sum()),))
    layout, end = {}, 0
    for name, (dtype, shape) in shapes.items():
        layout[name] = [dtype.str, list(shape), end]
        end = _align(end + dtype.itemsize * int(np.prod(shape)))
    head = json.dumps({"version": CACHE_VERSION, "codecs": list(codecs), "files": len(files),
                       "arrays": layout}).encode()
    start = _align(16 + len(head))
    # Several ranks, on several nodes, may write at once (no flock): each to its own temp name (host, pid and a
    # random part in it); the last rename wins.
    with atomic_write(cache) as tmp, open(tmp, "wb") as f:
        f.write(CACHE_MAGIC + struct.pack("<Q", len(head)) + head)
        for name in layout:
            f.write(b"\0" * (start + layout[name][2] - f.tell()))
            if name in video:
                f.write(np.ascontiguousarray(video[name]).data)
                continue
            for t, a, b in extra_runs if name == "extradata" else runs:
                f.write(np.ascontiguousarray(getattr(t, name)[a:b], PacketTable.DTYPES[name]).data)
