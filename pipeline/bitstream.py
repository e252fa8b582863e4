"""The bytes a decoder is given for one clip: packets keyframe..last frame of a file, cut out with the packet
index (pipeline/index/table.py) in one read, then wrapped for the decoder that takes them.

    clip_span     which packets a clip needs: the keyframe at or before its first frame .. its last frame
    read_span     the file bytes covering packets first..last (one seek, one read)
    ivf_slice     VP8/VP9 packets as an in-memory IVF stream, for DALI's fn.decoders.video (the DALI backend:
                  its CPU decoder does not seek, so it is given the clip's GOPs only)
    packet_slice  packets as the NVDEC and pyav backends feed them (PacketSlice): H.264/HEVC rewritten from the
                  MP4 form (length-prefixed NAL units, parameter sets in the avcC/hvcC record) to Annex-B (start
                  codes, parameter sets in front of the first keyframe; parameter_sets, to_annexb); other
                  codecs' payloads as stored (VP9 superframes included)
    decode_slice  a PacketSlice through an FFmpeg decoder (PyAV), each wanted frame handed to the caller once:
                  the pyav backend and the NVDEC backend's CPU twin
    slice_checks  the index checks every decoder fed these slices needs (8-bit 4:2:0, packet k = frame k)

Frame k of a slice is packet first + k: the callers check, from the packet index, that the video's frames are
not `reordered` and that each of its packets shows exactly one frame (`odd_packets` = 0; VP9 superframes are
one packet): NVDEC and pyav refuse other rows, DALI decodes them from the whole file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from pipeline.headers import CHROMA_420, CHROMA_NAMES
from pipeline.index.table import PacketTable, VideoIndex
from pipeline.manifest import DatasetError

# Codecs whose packets can be re-wrapped in IVF, with their IVF fourcc.
IVF_FOURCC = {"vp9": b"VP90", "vp8": b"VP80"}


def clip_span(index: VideoIndex, frames: np.ndarray) -> tuple[int, int]:
    """(first, last) packets a decoder needs for the clip of `frames` ((T,) file frame indices, any order; packet k
    is frame k): the keyframe at or before its first frame, and its last frame. The clip's frames are then
    frames - first in the slice."""
    return index.keyframe_at_or_before(int(frames.min())), int(frames.max())


def read_span(path: str, index: VideoIndex, first: int, last: int) -> tuple[bytes, int]:
    """The file bytes covering packets first..last, and the file offset they start at (one read)."""
    start = int(index.offsets[first:last + 1].min())
    end = int((index.offsets[first:last + 1] + index.sizes[first:last + 1]).max())
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start), start


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


ANNEXB_CODECS = ("h264", "hevc")  # NAL-unit codecs: length-prefixed (AVCC/HVCC) in MP4, start codes for NVDEC
START_CODE = b"\x00\x00\x00\x01"


def parameter_sets(codec: str, extradata: bytes) -> tuple[bytes, int]:
    """The parameter sets of an H.264/HEVC stream as Annex-B, and the NAL length size of its packets.

    extradata: the container's codec record. avcC (H.264 in MP4; version byte 1): SPS then PPS; hvcC (HEVC
    in MP4; version byte 1): arrays of VPS, SPS, PPS, SEI. Returns (start code + NAL unit for each,
    length size 1, 2 or 4). Extradata that is already Annex-B (or empty) comes back as it is with length
    size 0: the packets carry start codes themselves. Raises ValueError on a malformed record.
    """
    if len(extradata) < 7 or extradata[0] != 1:  # not a configuration record: Annex-B (or nothing)
        return bytes(extradata), 0
    nals: list[bytes] = []

    def take(pos: int) -> int:  # one u16-length-prefixed NAL unit at pos; returns the position after it
        n = int.from_bytes(extradata[pos:pos + 2], "big")
        if pos + 2 + n > len(extradata):
            raise ValueError(f"{codec} extradata: NAL unit past the end of the record")
        nals.append(START_CODE + extradata[pos + 2:pos + 2 + n])
        return pos + 2 + n

    if codec == "h264":  # ISO/IEC 14496-15 5.3.3.1
        length_size = (extradata[4] & 3) + 1
        pos = 6
        for _ in range(extradata[5] & 0x1F):  # SPS
            pos = take(pos)
        if pos >= len(extradata):
            raise ValueError("h264 extradata: no PPS count")
        count, pos = extradata[pos], pos + 1
        for _ in range(count):  # PPS
            pos = take(pos)
    elif codec == "hevc":  # ISO/IEC 14496-15 8.3.3.1: 22 fixed bytes, then arrays of NAL units by type
        if len(extradata) < 23:
            raise ValueError("hevc extradata: record shorter than its fixed part")
        length_size = (extradata[21] & 3) + 1
        pos = 23
        for _ in range(extradata[22]):
            count, pos = int.from_bytes(extradata[pos + 1:pos + 3], "big"), pos + 3
            for _ in range(count):
                pos = take(pos)
    else:
        raise ValueError(f"{codec}: no Annex-B form")
    if length_size == 3:
        raise ValueError(f"{codec} extradata: NAL length size 3 is not allowed")
    return b"".join(nals), length_size


def to_annexb(payload: bytes | memoryview, length_size: int) -> bytes:
    """One MP4 packet (NAL units, each after a big-endian length of length_size bytes) with start codes instead.

    length_size 0: the payload already has start codes (returned as it is). Raises ValueError when the
    lengths do not add up to the payload (a damaged packet, or the wrong length size)."""
    if length_size == 0:
        return bytes(payload)
    n = len(payload)
    if length_size == 4:  # the usual case: same size, overwrite the prefixes in place
        out = bytearray(payload)
        pos = 0
        while pos < n:
            size = int.from_bytes(out[pos:pos + 4], "big")
            if size == 0 or pos + 4 + size > n:
                raise ValueError(f"NAL length {size} at byte {pos} runs past the {n}-byte packet")
            out[pos:pos + 4] = START_CODE
            pos += 4 + size
        return bytes(out)
    parts, pos = [], 0
    while pos < n:
        size = int.from_bytes(payload[pos:pos + length_size], "big")
        if size == 0 or pos + length_size + size > n:
            raise ValueError(f"NAL length {size} at byte {pos} runs past the {n}-byte packet")
        parts += [START_CODE, payload[pos + length_size:pos + length_size + size]]
        pos += length_size + size
    return b"".join(parts)


@dataclass(frozen=True)
class PacketSlice:
    """Packets first..last of one video, ready for a decoder (NVDEC, or PyAV's decoder for the CPU twin).

    Packet k = data[offsets[k] : offsets[k] + sizes[k]] holds frame first + k (decode order = display order:
    the caller checks the video is not `reordered` and has no odd_packets). H.264/HEVC packets are Annex-B,
    the parameter sets from the extradata in front of packet 0 (a keyframe); other codecs' packets are the
    file's payloads (VP9 superframes included). offsets, sizes: (P,) int64.
    """

    codec: str
    width: int
    height: int
    first: int
    data: bytes
    offsets: np.ndarray
    sizes: np.ndarray

    def __len__(self) -> int:
        return len(self.offsets)


def packet_slice(path: str, index: VideoIndex, first: int, last: int) -> PacketSlice:
    """Packets first..last (inclusive; first should be a keyframe) of `path` as a PacketSlice: one read."""
    raw, base = read_span(path, index, first, last)
    offsets = index.offsets[first:last + 1] - base
    sizes = index.sizes[first:last + 1].astype(np.int64)
    if index.codec not in ANNEXB_CODECS:
        return PacketSlice(index.codec, index.width, index.height, first, raw, offsets, sizes)
    head, length_size = parameter_sets(index.codec, index.extradata)
    parts = [head]
    view = memoryview(raw)
    for o, s in zip(offsets.tolist(), sizes.tolist(), strict=True):
        parts.append(to_annexb(view[o:o + s], length_size))
    new_sizes = np.array([len(p) for p in parts[1:]], np.int64)
    new_sizes[0] += len(head)  # the parameter sets travel with the keyframe
    new_offsets = np.cumsum(new_sizes) - new_sizes
    return PacketSlice(index.codec, index.width, index.height, first, b"".join(parts), new_offsets, new_sizes)


def slice_checks(packets: PacketTable, needs: str, also: str = "") -> list[tuple[np.ndarray, Callable[[int], str]]]:
    """The checks of a backend that decodes packet slices into YUV 4:2:0 (pyav, nvdec), as pipeline.base.
    first_problems takes them, by precedence: 8-bit 4:2:0 pixels (the first frame's, from the index), no frame
    reordering and one shown frame per packet (packet k of a slice must be frame k). Each message names the fix:
    prepare_data.py writes all three. needs: who needs the pixel layout ("NVDEC's NV12 output needs"); also: the
    other backends that read pixels and reordered rows, appended to those fixes (", or use backend='decord'").
    Rows with odd packets are pointed to backend='dali', which decodes them from the whole file."""
    p = packets
    return [
        ((p.bit_depth != 8) | (p.chroma != CHROMA_420), lambda r: (
            f"{p.bit_depth[r]}-bit {CHROMA_NAMES.get(int(p.chroma[r]), 'unknown')} pixels; {needs} 8-bit 4:2:0: "
            f"re-prepare with prepare_data.py (it writes 8-bit 4:2:0){also}")),
        (p.reordered, lambda r: ("frames are reordered (B-frames), so packet k is not frame k; re-prepare with "
                                 f"prepare_data.py (it writes no B-frames){also}")),
        (p.odd_packets > 0, lambda r: (
            f"{p.odd_packets[r]} of its {p.count[r]} packets do not show exactly one frame (hidden VP8/VP9 frames "
            "stored in packets of their own), so packet k is not frame k; re-prepare with prepare_data.py (it "
            "writes one frame per packet), or use backend='dali' (it decodes such files whole)")),
    ]


class DecodeError(DatasetError):
    """A clip's packets did not give its frames. A DatasetError: train.py and evaluate.py print it as one line
    (the loader adds the file, the frames and the fix)."""


def output_slots(wanted: np.ndarray) -> dict[int, list[int]]:
    """{frame index in the slice: output positions that show it} (a looped clip shows a frame twice)."""
    out: dict[int, list[int]] = {}
    for t, k in enumerate(wanted.tolist()):
        out.setdefault(k, []).append(t)
    return out


def codec_context(contexts: dict[str, Any], codec: str):  # -> av.CodecContext
    """contexts[codec], an FFmpeg decoder made on first use with one thread (the loaders decode several clips at
    once, one per thread: less CPU per clip than several threads per clip) and kept for the next clips."""
    import av

    ctx = contexts.get(codec)
    if ctx is None:
        ctx = contexts[codec] = av.CodecContext.create(codec, "r")
        ctx.thread_count = 1
    return ctx


def decode_slice(ctx: Any, clip: PacketSlice, wanted: np.ndarray, put: Callable[[Any, list[int]], None],
                 formats: tuple[str, ...] = ("yuv420p",)) -> None:
    """Decode every packet of `clip` with ctx (codec_context's, for clip.codec; flushed afterwards, ready for the
    next clip) and call put(frame, positions) once for each frame clip.first + k that wanted ((T,) indices into
    the slice) names: frame an av.VideoFrame, positions the t with wanted[t] == k (output_slots). Frames outside
    `wanted` (the lead-in from the keyframe) are decoded and dropped. Raises DecodeError when FFmpeg fails, a
    wanted frame is not one of `formats` at the slice's size (a file whose frames change format or size after
    the first, which the index read), or a wanted frame does not come out."""
    import av

    slots, seen = output_slots(wanted), set()

    def take(frames) -> None:
        for f in frames:
            k = int(f.pts) if f.pts is not None else -1
            if k not in slots or k in seen:
                continue
            if f.format.name not in formats or (f.width, f.height) != (clip.width, clip.height):
                raise DecodeError(f"frame {clip.first + k} is {f.format.name} {f.width}x{f.height} where the index "
                                  f"says {formats[0]} {clip.width}x{clip.height}")
            seen.add(k)
            put(f, slots[k])

    try:
        for k in range(len(clip)):
            o, s = int(clip.offsets[k]), int(clip.sizes[k])
            packet = av.Packet(clip.data[o:o + s])
            packet.pts = k  # the decoder hands it back with the frame: frame k of the slice
            take(ctx.decode(packet))
        take(ctx.decode(None))  # end of stream: the frames still buffered
    except av.FFmpegError as e:
        raise DecodeError(f"decoding failed: {e}") from None
    finally:
        ctx.flush_buffers()  # ready for the next clip
    if len(seen) != len(slots):
        missing = sorted(set(slots) - seen)
        raise DecodeError(f"{len(missing)} frame(s) missing from the decoder's output, first {clip.first + missing[0]}")
