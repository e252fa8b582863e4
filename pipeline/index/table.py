"""The packet index of videos: where every frame's compressed payload lives in its file.

Why it exists: DALI 2.4's CPU `fn.decoders.video` does not seek (it decodes from the first frame of the bytes it
is given), so the DALI backend hands it only the packets from the keyframe at or before a clip's first frame to
its last frame, and the NVDEC backend feeds its decoders the same packets (pipeline/bitstream.py cuts and wraps
them; docs/design.md#packet-index). Finding those packets needs, per file, the byte offset and size of each
packet's payload and its keyframe flag, in decode order.

Per video the index also keeps what decides whether packet k is frame k and how a decoder may be fed
(pipeline/headers.py reads them from the headers; nothing is decoded for them): the codec extradata (for
H.264/HEVC in MP4: the avcC/hvcC record with the parameter sets, which bitstream.packet_slice puts in front of a
slice); whether its frames are reordered (B-frames); how many frames it shows and how many of its packets do
not show exactly one (a VP8/VP9 hidden frame stored in a packet of its own; VP9 superframes count as one
packet); the reorder depth its H.264/HEVC sequence parameter set declares; the bit depth and chroma format of
its first frame. The backends decide from these: NVDEC refuses reordered, odd-packet and non-8-bit-4:2:0 rows,
DALI gives odd-packet rows the whole file.

    VideoIndex   one file's packets (views into a PacketTable's arrays)
    PacketTable  V videos: per-video columns that point into flat per-packet arrays shared by all videos;
                 nothing is built per video at start-up
build.py indexes files (index_file, a process pool) and load_or_build returns a PacketTable; cache.py writes and
memory-maps it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from pipeline.headers import CHROMA_420


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
        codecs, columns, runs, extra_runs = concat_plan(tables)
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


def concat_plan(
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
