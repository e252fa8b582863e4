"""NVDEC backend ("nvdec"): persistent hardware decoders fed with the packet slices of the epoch plan, then one
batched augmentation pass (pipeline/augment.py) on the GPU.

Per clip of the plan (the same plan, boxes and flips as the DALI and decord backends):
    packets keyframe_at_or_before(first frame) .. last frame  (pipeline/bitstream.py: packet_slice; H.264/HEVC
        as Annex-B with the parameter sets in front, VP9 as stored)
    -> a worker thread's decoder -> (T, H*3/2, W) uint8 NV12, the plan's frames in order
Per batch: stack -> augment_nv12 -> (N, 3, T, S, S) float32 clips.

Decoders (nvdec_decoders.py): as many as worker threads, made when the loader is built; each worker thread takes
one on its first clip and keeps it, so a decoder is only ever used by its own thread (PyNvVideoCodec's threading
model); the batch is built on the consumer's stream (record_stream keeps the allocator from reusing a clip
early). Threads: workers rounded up to a multiple of the GPU's NVDEC engines (GetDecoderCaps): one session uses
one engine. "nvdec" decodes on the GPU only: device="cpu" is refused (on the CPU use backend='pyav', 'dali'
or 'decord'). The CPU twin (decoder="pyav", a constructor argument, not a LoaderConfig field) runs the same
machinery with PyAV's decoders, so the tests run it without a GPU.

A row the decoder cannot take (`problems`: codec, frame size, pixel format, reordering, one shown frame per
packet) is refused when the loader is built, with one line naming the file and the fix, or skipped and counted
with skip_bad (LoaderBase's policy). Latency "low" also needs streams that declare no reordering; otherwise the
loader uses "native" and says for how many rows.
"""

from __future__ import annotations

import functools
import itertools
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np

from pipeline.augment import augment_nv12
from pipeline.backends.nvdec_decoders import (
    ENGINES_CPU,
    LATENCIES,
    STATIC_LIMITS,
    DecodeError,
    Decoder,
    Limits,
    NvdecDecoder,
    PyAVDecoder,
    import_nvc,
    low_latency_problems,
    nvdec_limits,
    row_problems,
)
from pipeline.base import Batch, LoaderBase, LoaderConfig
from pipeline.bitstream import PacketSlice, clip_span, packet_slice
from pipeline.index.table import PacketTable
from pipeline.manifest import HINT
from pipeline.sampling import Plan

DECODERS = ("nvdec", "pyav")  # NvdecLoader(decoder=...): the hardware, or the CPU twin
GPU_ONLY = "backend='nvdec' decodes on the GPU (device='gpu'); on the CPU use backend='pyav', 'dali' or 'decord'"


@functools.cache
def hardware_limits(codecs: tuple[str, ...], gpu: int) -> tuple[dict[str, Limits], int]:
    """(limits per codec that GPU `gpu` decodes, its NVDEC engine count), asked once per process (GetDecoderCaps);
    when the call fails, NVIDIA's published limits (STATIC_LIMITS) and 1 engine, said in one line."""
    try:
        return nvdec_limits(list(codecs), gpu)
    except (AttributeError, TypeError) as e:  # the binding's enum names there are inferred
        print(f"warning: NVDEC GetDecoderCaps failed ({type(e).__name__}: {e}); using the published limits "
              "(STATIC_LIMITS) and 1 engine")
        return {c: STATIC_LIMITS[c] for c in codecs if c in STATIC_LIMITS}, ENGINES_CPU


def _gpu(config: LoaderConfig) -> int:
    import torch

    return torch.cuda.current_device() if config.device_id is None else config.device_id


def _as_array(found: dict[int, str], n: int) -> np.ndarray:
    out = np.full(n, "", object)
    for r, why in found.items():
        out[r] = why
    return out


def problems(config: LoaderConfig, packets: PacketTable) -> np.ndarray:
    """(V,) object array: why the GPU's NVDEC decoders cannot decode row i ("" = it can), by its limits
    (GetDecoderCaps) and NV12's needs (nvdec_decoders.row_problems)."""
    limits, _ = hardware_limits(tuple(sorted(set(packets.codecs))), _gpu(config))
    return _as_array(row_problems(packets, limits), len(packets))


def twin_problems(config: LoaderConfig, packets: PacketTable) -> np.ndarray:
    """problems for the CPU twin: NVIDIA's published limits (STATIC_LIMITS) instead of a GPU's."""
    return _as_array(row_problems(packets, STATIC_LIMITS), len(packets))


class NvdecLoader(LoaderBase):
    """Backend "nvdec" (device="gpu"). decoder: "nvdec" (the GPU's decoders, the default) or "pyav" (the CPU
    twin, on either device: for tests and benchmarks); latency: NvdecDecoder's ("native" | "low"). Worker
    threads (workers): config.workers, for NVDEC rounded up to a multiple of the engine count, started on the first
    iteration and kept until close(); as many decoders, made when the loader is built, one bound to each thread
    on its first clip (_decoder). Batches decoded ahead of the consumer: config.prefetch. limits, engines: what
    the rows were checked against. latency: the one in use ("low" falls back to "native" when
    low_latency_problems finds rows; then low_latency_refused counts them)."""

    def __init__(self, config: LoaderConfig, decoder: str = "nvdec", latency: str = "native"):
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        if latency not in LATENCIES:
            raise ValueError(f"latency must be one of {LATENCIES}, got {latency!r}")
        if decoder == "nvdec" and config.device != "gpu":
            raise ValueError(GPU_ONLY)
        if decoder == "nvdec":
            import_nvc()  # before indexing: a missing package fails at once
        super().__init__(config, problems if decoder == "nvdec" else twin_problems)
        self.decoder_kind = decoder
        if decoder == "nvdec":
            self.limits, self.engines = hardware_limits(tuple(sorted(set(self.packets.codecs))), _gpu(config))
        else:
            self.limits, self.engines = STATIC_LIMITS, ENGINES_CPU
        self.latency = latency  # NvdecDecoder's
        self._files = self.videos["file"].tolist()
        self.low_latency_refused = 0  # rows that made latency "low" fall back to "native"
        if latency == "low":
            unsafe = low_latency_problems(self.packets)
            if unsafe:
                self.latency, self.low_latency_refused = "native", len(unsafe)
                r, why = next(iter(unsafe.items()))
                if config.rank == 0:
                    print(f"NVDEC latency 'low' would lose frames of {len(unsafe)} of {len(self.videos)} row(s) "
                          f"(first: {self._files[r]}: {why}); decoding with latency 'native' instead")
        self.workers = max(1, -(-config.workers // self.engines) * self.engines)
        self._decoders: queue.SimpleQueue = queue.SimpleQueue()  # not yet taken by a worker thread
        for d in self._new_decoders(self.workers):
            self._decoders.put(d)
        self._bound = threading.local()  # .decoder: the worker thread's own
        self._executor: ThreadPoolExecutor | None = None

    def _new_decoders(self, n: int) -> list[Decoder]:
        if self.decoder_kind == "pyav":
            return [PyAVDecoder() for _ in range(n)]
        p = self.packets
        sizes = {name: (int(p.width[rows].max()), int(p.height[rows].max()))  # the largest frame per codec
                 for k, name in enumerate(p.codecs) if len(rows := np.flatnonzero(p.codec == k))}
        return [NvdecDecoder(sizes, self.torch_device, self.latency) for _ in range(n)]

    # -- per clip -------------------------------------------------------------------------------------------------
    def _decoder(self) -> Decoder:
        """This worker thread's decoder: taken on its first clip, then kept. The executor has self.workers
        threads and the pool as many decoders, so one is always there (get_nowait: a bug fails, not hangs)."""
        decoder = getattr(self._bound, "decoder", None)
        if decoder is None:
            decoder = self._bound.decoder = self._decoders.get_nowait()
        return decoder

    def cut(self, row: int, frames: np.ndarray) -> tuple[PacketSlice, np.ndarray]:
        """Clip (row, frames (T,) file frame indices) -> its packet slice (keyframe at or before the first
        frame .. the last frame) and the frames as (T,) int64 indices into the slice."""
        ix = self.packets.video(row)  # views into the memory-mapped table
        first, last = clip_span(ix, frames)
        return packet_slice(self._files[row], ix, first, last), frames - first

    def _decode(self, row: int, frames: np.ndarray):  # -> torch.Tensor (T, H*3/2, W) uint8
        try:
            clip, wanted = self.cut(row, frames)
            return self._decoder().decode_clip(clip, wanted)
        except (DecodeError, OSError, ValueError) as e:  # OSError, ValueError: the file changed since it was indexed
            raise DecodeError(f"{self._files[row]}: frames {int(frames.min())}..{int(frames.max())}: {e}. {HINT}") from None

    # -- per batch ------------------------------------------------------------------------------------------------
    def _assemble(self, bp: Plan, clips: list) -> Batch:
        import torch

        c, dev = self.config, self.torch_device
        hs, ws = self.packets.height[bp.rows], self.packets.width[bp.rows]
        if dev.type == "cuda" and clips[0].is_cuda:
            stream = torch.cuda.current_stream(dev)
            for x in clips:  # decoded on the workers' streams (already synchronised); used on this one
                x.record_stream(stream)
        n, t = len(clips), clips[0].shape[0]
        if len(set(hs.tolist())) == 1 and len(set(ws.tolist())) == 1:
            x = torch.stack(clips)  # (N, T, H*3/2, W)
            h = int(hs[0])
            y, uv = x[:, :, :h], x[:, :, h:]
        else:  # frames of different sizes: each clip in the top-left of padded planes
            hp, wp = int(hs.max()), int(ws.max())
            y = torch.empty((n, t, hp, wp), dtype=torch.uint8, device=clips[0].device)
            uv = torch.empty((n, t, hp // 2, wp), dtype=torch.uint8, device=clips[0].device)
            for i, (x, h, w) in enumerate(zip(clips, hs.tolist(), ws.tolist(), strict=True)):
                y[i, :, :h, :w] = x[:, :h]
                uv[i, :, :h // 2, :w] = x[:, h:]
        if y.device != dev:  # the twin with device="gpu": decoded on the CPU, augmented on the GPU
            y, uv = y.pin_memory().to(dev, non_blocking=True), uv.pin_memory().to(dev, non_blocking=True)
        sizes = np.stack([hs, ws], axis=1)
        out = augment_nv12(y, uv, sizes, bp.boxes, bp.flips, c.sample_size, c.normalisation)  # (N, 3, T, S, S)
        labels = torch.from_numpy(self.labels[bp.rows]).to(dev, non_blocking=True)
        video_idx = torch.from_numpy(bp.rows.copy()).to(dev, non_blocking=True)
        return Batch(out, labels, video_idx)

    def __iter__(self) -> Iterator[Batch]:
        self.check_open()
        batches = self.batch_plans()
        if not batches:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="nvdec")
        pool, todo = self._executor, iter(batches)
        pending: deque[tuple[Plan, list[Future]]] = deque()

        def submit(bp: Plan) -> None:
            pending.append((bp, [pool.submit(self._decode, int(r), fr)
                                 for r, fr in zip(bp.rows, bp.frames, strict=True)]))

        try:
            for bp in itertools.islice(todo, self.config.prefetch + 1):  # this batch + prefetch ahead
                submit(bp)
            while pending:
                bp, futures = pending[0]  # stays in pending until all its clips are in: a failed clip's batch
                clips = [f.result() for f in futures]  # is then cancelled in `finally` with the ones ahead
                pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    submit(nxt)
                yield self._assemble(bp, clips)
                self.check_open()  # close() while suspended: the pool is shut down
        finally:  # an abandoned or failed epoch: drop the clips not started, wait for the ones running, so
            # nothing decodes after the caller sees the end or the error, and nothing leaks into the next epoch
            started = [f for _, futures in pending for f in futures if not f.cancel()]
            wait(started)

    def close(self) -> None:
        """Stop the worker threads and free the decoders (NVDEC sessions). Idempotent."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)  # joins the threads: their decoders go
            self._executor = None
        self._bound = threading.local()
        while not self._decoders.empty():
            self._decoders.get()
        super().close()
