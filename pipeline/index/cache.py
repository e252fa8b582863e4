"""The packet index's cache file: DST/.cache/packets-<split>.idx, keyed by (path, size, mtime_ns).

It is memory-mapped, not loaded: start-up copies the per-video columns (~60 bytes a video) and leaves the packet
arrays (13 bytes a packet: offset int64, size int32, keyframe bool; ~0.9 GB for Kinetics-400's 240k x 300
packets) in the page cache, one copy per node for all DDP ranks, paged in only where a clip's packets are read
(docs/design.md#a-memory-mapped-index-cache). Extradata (a few dozen bytes a video) is one flat byte array
beside them.

Layout (little-endian): 8-byte magic, u64 length of a JSON header, the header {"version", "codecs", "files",
"arrays": {name: [dtype, shape, offset]}}, then each array's bytes at data start + offset, 64-byte aligned: the
per-video arrays files (paths, UTF-8, NUL-separated), fsize, mtime and PacketTable.VIDEO_COLUMNS, the per-packet
arrays PacketTable.PACKET_COLUMNS, then extradata. One file rather than a folder of .npy files because one file
can be replaced atomically (temp file + os.replace) while other processes still read the old one through their
mappings. A cache of another version, or a damaged one, is rebuilt.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_write
from pipeline.index.table import PacketTable, concat_plan

CACHE_VERSION = 4  # 3: extradata and the reordered flag per video; 4: shown, odd_packets, reorder, bit_depth, chroma
CACHE_MAGIC = b"PKTIDX\x00\x04"
_ALIGN = 64


def stat_keys(files: list[str]) -> np.ndarray:
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



def empty_cache() -> tuple[PacketTable, list[str], np.ndarray]:
    return PacketTable.from_videos([]), [], np.zeros((0, 2), np.int64)


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


def read_cache(cache: Path) -> tuple[PacketTable, list[str], np.ndarray] | None:
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


def write_cache(cache: Path, tables: list[PacketTable], files: list[str], keys: np.ndarray) -> None:
    """Write the rows of `tables` in order (row i: files[i], keys[i] = (size, mtime_ns)) as the cache file
    (layout: module docstring). Packets are streamed from where they are (the old cache's mapping, the newly
    indexed videos), not concatenated in memory first. Atomic: a temp file, then os.replace; processes that
    mapped the old file keep reading it, new readers get the new one."""
    codecs, columns, runs, extra_runs = concat_plan(tables)
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
