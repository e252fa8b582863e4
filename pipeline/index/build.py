"""Indexing video files: one file with PyAV (index_file), many in a process pool, and load_or_build, which
returns the PacketTable of a file list from the cache (cache.py) and indexes only what is new or changed.

The index is built once with PyAV (demux only, plus decoding the first frame) and doubles as the check that finds
missing, truncated or undecodable files before the first training step (docs/design.md#validate-before-the-first-step).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import multiprocessing
import os
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from pipeline.bitstream import parameter_sets
from pipeline.headers import pixel_layout, reorder_depth, shown_frames, split_nals
from pipeline.index.cache import empty_cache, read_cache, stat_keys, write_cache
from pipeline.index.table import PacketTable, VideoIndex
from pipeline.pools import kill_pool

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


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
    keys = stat_keys(unique)  # before indexing: a file changed meanwhile is indexed again next time
    table, cached_files, cached_keys = (read_cache(cache) if cache is not None else None) or empty_cache()
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
            write_cache(cache, parts, cached_files, cached_keys)
            mapped = read_cache(cache)  # the file's mapping, shared by the node's ranks
        if mapped is not None and mapped[1] == cached_files:  # (not if a rank without flock replaced it)
            table = mapped[0]
        else:
            table = PacketTable.concat(parts)
        row_of = {f: r for r, f in enumerate(cached_files)}
    return table.take(np.array([-1 if f in bad else row_of[f] for f in files], np.int64)), bad
