"""The NVDEC backend's decoders and the limits they are checked against (pipeline/backends/nvdec.py runs them).

A decoder (the `Decoder` protocol) takes one clip's packets (bitstream.PacketSlice: the keyframe at or before the
clip's first frame to its last frame; H.264/HEVC as Annex-B, VP9 as stored) and returns the clip's frames as
(T, H*3/2, W) uint8 NV12. Each is reused for every clip of its thread and flushed after each clip:
  NvdecDecoder  PyNvVideoCodec 2.2.4 (`pip install pynvvideocodec==2.2.4`; needs an NVIDIA driver with NVDEC;
                imported lazily): CreateDecoder(usedevicememory, maxwidth/maxheight = the dataset's largest frame,
                NATIVE output = NV12), each on its own CUDA stream; the wanted frames are copied out on that
                stream, the one the decoder writes its output buffers on, so the next Decode call, which reuses
                those buffers, writes behind the copies; the worker then synchronises that stream (blocking only
                itself). The calls as made, and what was verified without a GPU: docs/nvdec.md.
  PyAVDecoder   the CPU twin: PyAV's decoders (av.CodecContext) fed the same packet slices, the frames laid out
                as NV12 (pipeline/video.py). The tests compare the hardware's output with it, and run the loader's
                own machinery (threads, per-thread decoders, cancellation) through it without a GPU.

Limits are checked when the loader is built, never discovered mid-epoch (row_problems): codec support and
minimum/maximum frame size (GetDecoderCaps on a GPU; STATIC_LIMITS, NVIDIA's NVDEC application note, for the
twin), even frame sizes and 8-bit 4:2:0 pixels (NV12), no frame reordering and one shown frame per packet
(packet k must be frame k: prepare_data.py writes no B-frames and no hidden frames). Latency "low" also needs
streams that declare no reordering (low_latency_problems). At decode time, a frame that is not the NV12 the index
promises (nv12_problem) is a DecodeError.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import numpy as np

from pipeline.base import first_problems
from pipeline.bitstream import (
    DecodeError,
    PacketSlice,
    codec_context,
    decode_slice,
    output_slots,
    slice_checks,
)
from pipeline.headers import REORDER_UNKNOWN
from pipeline.index.table import PacketTable

NVC_HINT = "pip install pynvvideocodec==2.2.4 (needs an NVIDIA driver with NVDEC)"


class Limits(NamedTuple):
    """Frame sizes one codec decodes, in pixels."""

    min_width: int
    min_height: int
    max_width: int
    max_height: int


# NVDEC's limits per codec for 8-bit 4:2:0 (NVIDIA Video Codec SDK, NVDEC application note; Turing and
# later). Used for the CPU twin and tests; on a GPU, GetDecoderCaps' values replace them. VP9's 128x128 was
# also seen on an H100 ("Video is too small ... 96x64 vs supported:128x128"); HEVC's 144x144 is the note's
# (other sources say 128x128; the larger is kept until measured, as prepare_data.py does).
STATIC_LIMITS: dict[str, Limits] = {
    "h264": Limits(48, 16, 4096, 4096),
    "hevc": Limits(144, 144, 8192, 8192),
    "vp8": Limits(48, 16, 4096, 4096),
    "vp9": Limits(128, 128, 8192, 8192),
}
ENGINES_CPU = 1  # "engines" of the CPU twin: LoaderConfig.workers threads, as given


def import_nvc():  # -> the PyNvVideoCodec module
    """PyNvVideoCodec, imported on first use (it needs libnvidia-encode, i.e. an NVIDIA driver)."""
    try:
        import PyNvVideoCodec as nvc
    except (ImportError, RuntimeError, OSError) as e:
        raise ImportError(f"the NVDEC decoder needs PyNvVideoCodec: {NVC_HINT}; or use device='cpu' "
                          f"(its CPU twin) or another backend ({type(e).__name__}: {e})") from None
    return nvc


def nvdec_limits(codecs: list[str], gpu: int) -> tuple[dict[str, Limits], int]:
    """(limits per codec that the GPU decodes, NVDEC engine count) from GetDecoderCaps (8-bit 4:2:0)."""
    nvc = import_nvc()
    chroma = _enum_member(nvc.cudaVideoChromaFormat, "420")
    limits, engines = {}, 1
    for codec in codecs:
        if codec not in NVC_CODECS:
            continue
        caps = nvc.GetDecoderCaps(gpuid=gpu, codec=getattr(nvc.cudaVideoCodec, NVC_CODECS[codec]),
                                  chromaformat=chroma, bitdepth=8)
        if not caps or not caps.get("width_max"):
            continue  # this GPU has no decoder for the codec
        limits[codec] = Limits(int(caps["width_min"]), int(caps["height_min"]), int(caps["width_max"]),
                               int(caps["height_max"]))
        engines = max(engines, int(caps.get("num_decoder_engines", 1)))
    return limits, engines


NVC_CODECS = {"h264": "H264", "hevc": "HEVC", "vp8": "VP8", "vp9": "VP9"}  # index codec -> cudaVideoCodec


def _enum_member(enum, part: str):
    names = [n for n in dir(enum) if part in n and not n.startswith("_")]
    if not names:
        raise AttributeError(f"PyNvVideoCodec: no member with {part!r} in {enum} ({dir(enum)})")
    return getattr(enum, names[0])


def needed_height(width: int, height: int, lim: Limits) -> int:
    """The smallest even prepare_data.py --height whose output (aspect kept) meets lim's minimum size."""
    h = max(lim.min_height, -(-lim.min_width * height // width))
    return h + h % 2


def row_problems(packets: PacketTable, limits: dict[str, Limits]) -> dict[int, str]:
    """{row: why this decoder cannot decode it, with the fix} for the rows of `packets` that fail; rows with
    no packets (bad files, reported elsewhere) are left out. Vectorised: one pass over the table's columns."""
    w, h = packets.width.astype(np.int64), packets.height.astype(np.int64)
    lim = np.zeros((len(packets), 4), np.int64)  # per row: its codec's min W, min H, max W, max H
    known = np.zeros(len(packets), bool)
    for k, name in enumerate(packets.codecs):
        if name in limits:
            lim[packets.codec == k] = limits[name]
            known |= packets.codec == k
    checks = [  # (failing rows, message), by precedence
        (~known, lambda r: (f"codec {packets.codec_of(r)} is not decoded by this NVDEC decoder "
                            f"({', '.join(sorted(limits))}); re-prepare with prepare_data.py --codec vp9, "
                            "or use backend='dali' or 'decord'")),
        ((w < lim[:, 0]) | (h < lim[:, 1]), lambda r: (
            f"{w[r]}x{h[r]} is below {lim[r, 0]}x{lim[r, 1]}, the smallest {packets.codec_of(r)} frame NVDEC "
            f"decodes; re-prepare with prepare_data.py --height {needed_height(w[r], h[r], Limits(*lim[r]))} "
            "or larger")),
        ((w > lim[:, 2]) | (h > lim[:, 3]), lambda r: (
            f"{w[r]}x{h[r]} is above {lim[r, 2]}x{lim[r, 3]}, the largest {packets.codec_of(r)} frame NVDEC "
            "decodes; re-prepare with a smaller prepare_data.py --height")),
        ((w % 2 == 1) | (h % 2 == 1), lambda r: (
            f"{w[r]}x{h[r]}: odd frame size (NV12 needs even); re-prepare with prepare_data.py")),
        *slice_checks(packets, "NVDEC's NV12 output needs"),
    ]
    answers = first_problems(packets, checks)
    return {r: answers[r] for r in np.flatnonzero(answers != "").tolist()}


def low_latency_problems(packets: PacketTable) -> dict[int, str]:
    """{row: why NVDEC's low-latency mode would lose frames of it} for the rows of `packets`. That mode takes
    each frame out of the Decode call of its packet and sends no end of stream, which holds when every packet
    shows exactly one frame and the stream declares that no frame waits for reordering (H.264
    max_num_reorder_frames, HEVC sps_max_num_reorder_pics = 0: otherwise NVIDIA's parser holds frames back for
    its DPB). Prepared data meets both; NvdecLoader falls back to latency "native" when a row does not."""
    out: dict[int, str] = {}
    for r in np.flatnonzero(packets.count > 0).tolist():
        if packets.odd_packets[r]:
            out[r] = f"{packets.odd_packets[r]} packet(s) do not show exactly one frame"
        elif packets.reorder[r] == REORDER_UNKNOWN:
            out[r] = f"its {packets.codec_of(r)} sequence parameter set does not declare max_num_reorder_frames"
        elif packets.reorder[r] != 0:
            out[r] = f"its {packets.codec_of(r)} sequence parameter set allows {packets.reorder[r]} reordered frame(s)"
    return out


def nv12_problem(shape: tuple[int, ...], dtype: str, height: int, width: int) -> str:
    """Why a decoded frame of `shape` and `dtype` (e.g. "torch.uint8") is not the (H*3/2, W) uint8 NV12 frame of
    an 8-bit 4:2:0 height x width video ("" when it is). NVDEC's NATIVE output is P016 (uint16) for 10/12-bit
    streams and other layouts for 4:2:2/4:4:4 ones; the index refuses such rows, this catches a file whose
    frames change format or size after its first."""
    want = (height * 3 // 2, width)
    if tuple(shape) == want and dtype.rsplit(".", 1)[-1] == "uint8":
        return ""
    return (f"the decoder gave a {tuple(shape)} {dtype.rsplit('.', 1)[-1]} frame where NV12 of the indexed "
            f"{width}x{height} is {want} uint8 (a frame that is not 8-bit 4:2:0 at that size)")


class Decoder(Protocol):
    def decode_clip(self, clip: PacketSlice, wanted: np.ndarray):  # -> torch.Tensor
        """Decode all packets of `clip`; return frames clip.first + wanted[t] as (T, H*3/2, W) uint8 NV12
        (rows 0..H-1: Y; rows H..: U and V interleaved), T = len(wanted). Raise if any is missing."""
        ...


def submissions(clip: PacketSlice, buffer: np.ndarray) -> list[tuple[int, int, int]]:
    """The (address, size, pts) of each packet of `clip` in `buffer` (a uint8 view of clip.data, kept alive
    by the caller until the decoder returns): what PacketData's bsl_data, bsl and pts get. pts = k, the
    frame's index in the slice; the decoder hands it back with the frame."""
    base = buffer.ctypes.data
    return [(base + o, s, k) for k, (o, s) in enumerate(zip(clip.offsets.tolist(), clip.sizes.tolist(), strict=True))]


class PyAVDecoder:
    """The CPU twin of NvdecDecoder: PyAV (FFmpeg) decodes the same packet slices; the frames are laid out as
    NVDEC's NV12. One per thread; one persistent av.CodecContext per codec, flushed (drained, then reset)
    after each clip like the hardware decoder."""

    def __init__(self) -> None:
        self._contexts: dict[str, object] = {}

    def decode_clip(self, clip: PacketSlice, wanted: np.ndarray):  # -> torch.Tensor (T, H*3/2, W) uint8
        import torch

        from pipeline.video import to_nv12  # (imports av: not with this module)

        out = np.empty((len(wanted), clip.height * 3 // 2, clip.width), np.uint8)

        def put(frame, positions: list[int]) -> None:
            nv12 = to_nv12(frame, out[positions[0]])
            for t in positions[1:]:
                out[t] = nv12

        decode_slice(codec_context(self._contexts, clip.codec), clip, wanted, put, ("yuv420p", "yuvj420p"))
        return torch.from_numpy(out)


LATENCIES = ("native", "low")
CODED_ALIGN = 64  # decoder size limits are rounded up to this (NvdecDecoder._create)


class NvdecDecoder:
    """One thread's NVDEC decoders (one per codec of the dataset), on their own CUDA stream.

    Created with the dataset's largest frame per codec (maxwidth/maxheight, rounded up to CODED_ALIGN to cover
    the coded size), so a smaller frame needs only
    setReconfigParams, never a new decoder; NATIVE output (NV12). After an exception the decoder is recreated
    (NVDEC state is then unknown). latency:
      "native": display latency NATIVE (the parser may hold frames back); an end-of-stream packet after each
                clip returns them. Relies on the decoder staying usable after end of stream (inferred, not yet
                run on a GPU).
      "low":    display latency LOW and ENDOFPICTURE on every packet: each frame comes out of the Decode call
                of its packet, no end of stream. Needs one shown frame per packet and streams that declare no
                reordering (NvdecLoader checks: low_latency_problems). The hedge if "native" does not survive
                end of stream, and possibly faster (GPU check compares).
    """

    def __init__(self, codecs: dict[str, tuple[int, int]], device, latency: str = "native"):
        import torch  # codecs: {codec: (largest width, largest height)}

        if latency not in LATENCIES:
            raise ValueError(f"latency must be one of {LATENCIES}, got {latency!r}")
        self.nvc = import_nvc()
        self.latency = latency
        self.device = torch.device(device)
        self.stream = torch.cuda.Stream(device=self.device)
        self._max = dict(codecs)
        self._decoders: dict[str, object] = {}
        self._sizes: dict[str, tuple[int, int]] = {}
        for codec in codecs:
            self._create(codec)

    def _create(self, codec: str) -> None:
        nvc = self.nvc
        # The limits in coded pixels, rounded up to 64 (HEVC's largest coding block; H.264 codes 16-pixel
        # macroblocks, VP9 8-pixel blocks): an 840x360 H.264 video is decoded at 848x368 and cropped, and
        # NVIDIA's decoder refuses to reconfigure to a coded size above maxwidth/maxheight (the reconfigure
        # error "width/height > maxwidth/maxheight"), so the largest shown size alone is not enough.
        w, h = (-(-x // CODED_ALIGN) * CODED_ALIGN for x in self._max[codec])
        self._decoders[codec] = nvc.CreateDecoder(
            gpuid=self.device.index or 0, codec=getattr(nvc.cudaVideoCodec, NVC_CODECS[codec]),
            cudacontext=_cuda_context(self.device), cudastream=self.stream.cuda_stream, usedevicememory=True,
            maxwidth=w, maxheight=h, outputColorType=nvc.OutputColorType.NATIVE,
            latency=nvc.DisplayDecodeLatencyType.LOW if self.latency == "low" else nvc.DisplayDecodeLatencyType.NATIVE,
        )  # no enableasyncallocations (reported to leak), no bWaitForSessionWarmUp (a process-wide barrier)
        self._sizes.pop(codec, None)

    def decode_clip(self, clip: PacketSlice, wanted: np.ndarray):  # -> torch.Tensor (T, H*3/2, W) uint8, cuda
        import torch

        nvc, dec = self.nvc, self._decoders[clip.codec]
        h, w = clip.height, clip.width
        try:
            if self._sizes.get(clip.codec, (w, h)) != (w, h):
                dec.setReconfigParams(w, h)  # output size follows; no live aliases of the old pool remain
            self._sizes[clip.codec] = (w, h)
            buffer = np.frombuffer(clip.data, np.uint8)  # alive until the last Decode returns
            slots, seen = output_slots(wanted), set()
            with torch.cuda.stream(self.stream):
                out = torch.empty((len(wanted), h * 3 // 2, w), dtype=torch.uint8, device=self.device)

                def take(frames) -> None:
                    # Enqueued on self.stream, which the decoder also writes its output buffers on (cudastream):
                    # the next Decode reuses them, and its writes queue behind these copies.
                    for f in frames:
                        k = int(f.getPTS())
                        if k in slots and k not in seen:
                            seen.add(k)
                            src = torch.from_dlpack(f)  # (H*3/2, W) uint8 NV12, or what the stream really is
                            why = nv12_problem(tuple(src.shape), str(src.dtype), h, w)
                            if why:
                                raise DecodeError(f"frame {clip.first + k}: {why}")
                            for t in slots[k]:
                                out[t].copy_(src)

                low = self.latency == "low"
                for address, size, pts in submissions(clip, buffer):
                    packet = nvc.PacketData()
                    packet.bsl_data, packet.bsl, packet.pts = address, size, pts
                    if low:
                        packet.decode_flag = nvc.VideoPacketFlag.ENDOFPICTURE  # decode and show it now
                    take(_decode_call(dec, packet))
                if not low:
                    take(_decode_call(dec, nvc.PacketData()))  # bsl 0: end of stream, returns the buffered frames
            self.stream.synchronize()  # this worker waits, the GPU's other streams go on
        except Exception:
            self._create(clip.codec)
            raise
        if len(seen) != len(slots):  # NVDEC only prints its errors: count the frames
            raise DecodeError(f"NVDEC returned {len(seen)} of the {len(slots)} frames wanted")
        return out


def _decode_call(dec, packet) -> list:
    """dec.Decode(packet). PyNvVideoCodec raises RuntimeError (or ValueError) for a stream it cannot take, e.g.
    a bit depth or chroma format other than the decoder's ("Reconfigure Not supported"): a DecodeError, which
    the loader turns into one line naming the file."""
    try:
        return dec.Decode(packet)
    except (RuntimeError, ValueError) as e:
        raise DecodeError(f"NVDEC refused the stream ({e})") from None


def _cuda_context(device) -> int:
    """The CUcontext torch uses on `device` (its primary context), for CreateDecoder; 0 lets PyNvVideoCodec
    retain the primary context itself (inferred to be the same one)."""
    import ctypes

    import torch

    torch.zeros(1, device=device)  # torch makes the primary context current in this thread
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    ctx = ctypes.c_void_p()
    with torch.cuda.device(device):
        if libcuda.cuCtxGetCurrent(ctypes.byref(ctx)) != 0:
            return 0
    return ctx.value or 0


