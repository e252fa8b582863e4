"""Per-video packet index: where every frame's compressed payload lives in the file.

Why: DALI 2.4's CPU `fn.decoders.video` does not seek; it decodes from the first frame of the bytes it is
given (design.md section 4). So the DALI loader hands it only the packets from the keyframe at or before a
clip's first frame to its last frame, re-wrapped as an in-memory IVF stream (`ivf_slice`). Finding those
packets needs, per file: the byte offset and size of each packet's payload and its keyframe flag, in
display order (VP8/VP9 in WebM carry one shown frame per packet and have no reordering).

The index is built once with PyAV (demux only, plus decoding the first frame), cached in
DST/.cache/packets-<split>.npz keyed by (path, size, mtime), and doubles as the check that finds missing,
truncated or undecodable files before the first training step.
"""

from __future__ import annotations

import fcntl
import mmap
import multiprocessing
import os
import struct
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

# Codecs whose packets can be re-wrapped in IVF, with their IVF fourcc.
IVF_FOURCC = {"vp9": b"VP90", "vp8": b"VP80"}
CACHE_VERSION = 1


@dataclass(frozen=True)
class VideoIndex:
    """Packet table of one file, in display order.  offsets/sizes: (P,) int64 bytes; keyframes: (P,) bool."""

    codec: str
    width: int
    height: int
    fps: float
    offsets: np.ndarray
    sizes: np.ndarray
    keyframes: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)

    def keyframe_at_or_before(self, frame: int) -> int:
        keys = np.flatnonzero(self.keyframes[: frame + 1])
        return int(keys[-1]) if len(keys) else 0


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
            offsets, sizes, keys = [], [], []
            first_decoded = 0
            for p in c.demux(st):
                if p.size == 0:  # the flush packet
                    continue
                payload = bytes(p)
                offsets.append(_payload_offset(raw, payload, p.pos))
                sizes.append(p.size)
                keys.append(bool(p.is_keyframe))
                if len(sizes) == 1:  # decode the first frame: catches broken headers and codec parameters
                    first_decoded = len(st.codec_context.decode(p)) + len(st.codec_context.decode(None))
            width, height = st.codec_context.width, st.codec_context.height
    except BadVideo:
        raise
    except (OSError, ValueError, av.FFmpegError) as e:
        raise BadVideo(f"unreadable ({type(e).__name__}: {e})") from None
    if not sizes:
        raise BadVideo("no video packets")
    if not keys[0]:
        raise BadVideo("first packet is not a keyframe")
    if first_decoded == 0:
        raise BadVideo("first frame does not decode")
    if min(offsets) < 0:
        raise BadVideo("packet payloads not found in the file (unsupported container layout)")
    return VideoIndex(codec, int(width), int(height), float(rate), np.asarray(offsets, np.int64),
                      np.asarray(sizes, np.int64), np.asarray(keys, bool))


def _payload_offset(raw: mmap.mmap, payload: bytes, pos: int | None) -> int:
    """Byte offset of `payload` in the file. PyAV's packet.pos may point at the container's block header
    (Matroska SimpleBlock: 4 bytes before the payload), so compare bytes instead of trusting it."""
    if pos is not None and pos >= 0:
        for k in range(0, 64):
            if raw[pos + k : pos + k + len(payload)] == payload:
                return pos + k
        return raw.find(payload, pos)
    return raw.find(payload)


def ivf_slice(raw: bytes | memoryview, base: int, index: VideoIndex, first: int, last: int) -> np.ndarray:
    """IVF stream (uint8) holding packets first..last (inclusive); `raw` holds the file bytes from `base`.

    IVF: 32-byte file header, then per frame a 12-byte header (payload size u32, timestamp u64) and payload.
    """
    fps = Fraction(index.fps).limit_denominator(1001)
    count = last - first + 1
    parts = [struct.pack("<4sHH4sHHIII4x", b"DKIF", 0, 32, IVF_FOURCC[index.codec], index.width,
                         index.height, fps.numerator, fps.denominator, count)]
    for k, i in enumerate(range(first, last + 1)):
        o, s = int(index.offsets[i]) - base, int(index.sizes[i])
        parts.append(struct.pack("<IQ", s, k))
        parts.append(raw[o : o + s])
    return np.frombuffer(b"".join(parts), np.uint8)


def read_span(path: str, index: VideoIndex, first: int, last: int) -> tuple[bytes, int]:
    """The file bytes covering packets first..last, and the file offset they start at (one read)."""
    start = int(index.offsets[first:last + 1].min())
    end = int((index.offsets[first:last + 1] + index.sizes[first:last + 1]).max())
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start), start


def _stat_key(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _index_or_reason(path: str) -> VideoIndex | str:
    """index_file for a worker process: the index, or the reason the file is bad."""
    try:
        return index_file(path)
    except BadVideo as e:
        return str(e)


def default_workers(n_files: int) -> int:
    """Processes for indexing n_files: one per 64 files, at most one per core (and 32); 1 = in this process."""
    return max(1, min(os.cpu_count() or 1, n_files // 64, 32))


def load_or_build(
    files: list[str], cache: Path | None, progress: bool = True, workers: int | None = None
) -> tuple[dict[str, VideoIndex], dict[str, str]]:
    """Packet indexes for `files` (absolute paths) and the reasons of those that are bad.

    Good entries are cached in `cache` (an .npz); files whose size or mtime changed are re-indexed. Bad
    files are never cached, so fixing them is picked up on the next run. Indexing costs ~15 ms per 10 s
    video (mostly opening the decoder), so large lists are indexed by `workers` processes (default:
    default_workers). Concurrent callers (DDP ranks of one node) take turns on a lock file next to the
    cache: the first indexes, the others then find everything cached.
    """
    unique = list(dict.fromkeys(files))
    if cache is None:
        return _load_or_build(unique, None, progress, workers)
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache.with_name(cache.name + ".lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        except OSError:  # a file system without locks: every caller indexes for itself (slower, still correct)
            pass
        return _load_or_build(unique, cache, progress, workers)


def _load_or_build(
    unique: list[str], cache: Path | None, progress: bool, workers: int | None
) -> tuple[dict[str, VideoIndex], dict[str, str]]:
    cached = _read_cache(cache) if cache is not None else {}
    good: dict[str, VideoIndex] = {}
    bad: dict[str, str] = {}
    todo = []
    for f in unique:
        try:
            key = _stat_key(f)
        except OSError:
            bad[f] = "file not found"
            continue
        hit = cached.get(f)
        if hit is not None and hit[0] == key:
            good[f] = hit[1]
        else:
            todo.append(f)
    if not todo:
        return good, bad
    workers = default_workers(len(todo)) if workers is None else workers
    pool = None
    if workers > 1:
        # spawn, not fork: the caller may already run DALI or torch threads
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_index_or_reason, todo, chunksize=16)
    else:
        results = map(_index_or_reason, todo)
    try:
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
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if cache is not None:
        _write_cache(cache, {f: (_stat_key(f), good[f]) for f in good})
    return good, bad


def _read_cache(cache: Path) -> dict[str, tuple[tuple[int, int], VideoIndex]]:
    if not cache.is_file():
        return {}
    try:
        z = np.load(cache, allow_pickle=False)
        if int(z["version"]) != CACHE_VERSION:
            return {}
        out = {}
        for i, f in enumerate(z["files"]):
            a, n = int(z["first"][i]), int(z["count"][i])
            out[str(f)] = (
                (int(z["fsize"][i]), int(z["mtime"][i])),
                VideoIndex(str(z["codec"][i]), int(z["width"][i]), int(z["height"][i]), float(z["fps"][i]),
                           z["offsets"][a:a + n], z["sizes"][a:a + n], z["keyframes"][a:a + n]),
            )
        return out
    except (OSError, KeyError, ValueError):
        return {}  # a damaged cache is rebuilt


def _write_cache(cache: Path, entries: dict[str, tuple[tuple[int, int], VideoIndex]]) -> None:
    if not entries:
        return
    files = list(entries)
    idx = [entries[f][1] for f in files]
    counts = np.array([len(x) for x in idx], np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f"{cache.stem}.{os.getpid()}.tmp.npz")  # several ranks may write at once

    def cat(xs: list[np.ndarray], dt: type) -> np.ndarray:
        return np.concatenate(xs).astype(dt)

    np.savez(
        tmp, version=CACHE_VERSION, files=np.array(files, dtype=str),
        fsize=np.array([entries[f][0][0] for f in files], np.int64),
        mtime=np.array([entries[f][0][1] for f in files], np.int64),
        codec=np.array([x.codec for x in idx], dtype=str), width=np.array([x.width for x in idx], np.int64),
        height=np.array([x.height for x in idx], np.int64), fps=np.array([x.fps for x in idx], np.float64),
        first=np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64), count=counts,
        offsets=cat([x.offsets for x in idx], np.int64), sizes=cat([x.sizes for x in idx], np.int64),
        keyframes=cat([x.keyframes for x in idx], bool),
    )  # fmt: skip
    os.replace(tmp, cache)
