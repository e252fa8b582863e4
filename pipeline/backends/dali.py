"""DALI backend: the host sends each clip's compressed packets and parameters; DALI decodes, crops, resizes,
flips and normalises, on CPU (device="cpu") or with the GPU's decoders (device="gpu", "mixed").

Graph, per clip (all parameters come from the epoch plan, DALI's RNG is not used):
    external_source -> enc (bytes) uint8, frames (T,) int32, anchor (y0, x0) int32, shape (side, side) int32,
                       mirror int32
    fn.decoders.video(enc, frames)         -> (T, H, W, 3) uint8
    fn.slice(anchor, shape, axes H, W)     -> (T, side, side, 3) uint8   the exact integer crop box
    fn.resize(size=S) linear + antialias   -> (T, S, S, 3) uint8
    fn.crop_mirror_normalize(mirror, mean, std, FLOAT, "CFHW") -> (3, T, S, S) float32
        out = (x - mean) / std on the uint8 input x: the normalisation's 0-255-scale numbers
        (Normalisation.on_pixels: mean x 255 / value_scale, std x 255 / value_scale; scale left at 1), which
        is (x / 255 * value_scale - mean) / std in the normalisation's own terms

Why enc is an IVF slice and not the file: the CPU decoder decodes from the first frame it is given (no seek:
docs/design.md#gop-slices-for-the-decoders-that-do-not-seek), so a clip late in a file costs several times one at
its start. The host cuts the
packets keyframe_at_or_before(first)..last out of the file (one read, using the packet index) and wraps
them in IVF; frames become relative to that keyframe. That needs packet k to be frame k: a VP8/VP9 file
with hidden frames stored in packets of their own (the packet index counts them: odd_packets) gets its whole
file instead, with a count printed when the loader is built. dali_input="file" sends the whole file for every
row (the only choice for H.264/HEVC/AV1 files, which only the GPU decodes).

Why slice then resize rather than resize with roi_start/roi_end: a ROI resize with antialiasing also reads
pixels outside the box, whereas the reference implementation and the other backends crop first
(docs/design.md#slice-then-resize-in-the-dali-graph).

Lifecycle: the external source is a _Feed object holding the feed state, not a bound method of the loader,
so the pipeline does not point back at the loader (no reference cycle): dropping the loader, or close(),
frees the pipeline at once and DALI's threads are joined (tests/test_pipeline.py counts them).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import numpy as np

from pipeline.base import Batch, LoaderBase, LoaderConfig
from pipeline.bitstream import IVF_FOURCC, clip_span, ivf_slice, read_span
from pipeline.index.table import PacketTable
from pipeline.sampling import Plan

CPU_CODECS = ("vp8", "vp9", "mjpeg")  # what DALI 2.4's CPU decoder accepts (measured); the GPU decodes all


class _Feed:
    """The external source: called by DALI ahead of consumption (prefetch), it returns the encoded inputs and
    parameters of the next batch of the plan, and raises StopIteration at the epoch's end."""

    def __init__(self, files: list[str], packets: PacketTable, gop: bool):
        self.files, self.packets = files, packets
        ivf_codec = np.array([c in IVF_FOURCC for c in packets.codecs], bool)
        self.ivf = gop & ivf_codec[packets.codec] if len(packets.codecs) else np.zeros(len(packets), bool)
        # A slice's frame k is its packet k only when every packet shows one frame: rows with hidden frames in
        # packets of their own are decoded from the whole file, where the decoder finds the shown frames itself.
        self.ivf &= packets.odd_packets == 0
        self.batches: Iterator[Plan] = iter(())
        self.emitted: deque[Plan] = deque()  # batches handed to DALI, not yet returned (<= prefetch + 1)

    def __call__(self) -> list[list[np.ndarray]]:
        bp = next(self.batches)
        self.emitted.append(bp)
        enc, frames, anchor, shape, mirror = [], [], [], [], []
        for row, fr, (x0, y0, side), flip in zip(bp.rows, bp.frames, bp.boxes, bp.flips, strict=True):
            path = self.files[row]
            if self.ivf[row]:  # only the packets keyframe..clip end, re-wrapped as IVF (module docstring)
                ix = self.packets.video(row)  # views into the memory-mapped packet table
                first, last = clip_span(ix, fr)
                raw, base = read_span(path, ix, first, last)
                enc.append(ivf_slice(raw, base, ix, first, last))
                frames.append((fr - first).astype(np.int32))
            else:
                enc.append(np.fromfile(path, np.uint8))
                frames.append(fr.astype(np.int32))
            anchor.append(np.array([y0, x0], np.int32))
            shape.append(np.array([side, side], np.int32))
            mirror.append(np.array(int(flip), np.int32))
        return [enc, frames, anchor, shape, mirror]


def problems(config: LoaderConfig, packets: PacketTable) -> np.ndarray:
    """(V,) object array: why DALI cannot decode row i ("" = it can): on the CPU, codecs other than VP8, VP9 and
    MJPEG (DALI 2.4's CPU decoder drops such a file and then fails the whole pipeline; docs/design.md#dali-facts)."""
    out = np.full(len(packets), "", object)
    if config.device == "cpu":
        for k, name in enumerate(packets.codecs):
            if name not in CPU_CODECS:
                out[packets.codec == k] = (f"codec {name} cannot be decoded by DALI on CPU (VP8/VP9/MJPEG only); "
                                           "use backend='decord' or device='gpu'")
    return out


def require_dali() -> None:
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        raise ImportError(
            "backend='dali' needs NVIDIA DALI: pip install nvidia-dali-cuda120==2.4.0, or use backend='decord'"
        ) from None


class DaliLoader(LoaderBase):
    def __init__(self, config: LoaderConfig):
        require_dali()  # before indexing: a missing package fails at once
        super().__init__(config, problems)
        self._feed = _Feed(self.videos["file"].tolist(), self.packets, config.dali_input == "gop")
        odd = np.flatnonzero(self.packets.odd_packets > 0)
        self.whole_file_rows = len(odd) if config.dali_input == "gop" else 0  # GOP slices refused (_Feed)
        if self.whole_file_rows and config.rank == 0:
            print(f"{len(odd)} of {len(self.videos)} row(s) have packets that do not show exactly one frame (hidden "
                  f"VP8/VP9 frames stored alone; first: {self.videos['file'][odd[0]]}): DALI decodes them from the "
                  "whole file (slower for clips late in a file; prepare_data.py writes one frame per packet)")
        self._in_epoch = False
        self._pipe = self._build_pipeline(self._feed)

    def _build_pipeline(self, feed: _Feed):  # -> nvidia.dali.Pipeline
        from nvidia.dali import fn, pipeline_def, types

        c = self.config
        decode_device = "mixed" if c.device == "gpu" else "cpu"
        mean, std = c.normalisation.on_pixels()  # 0-255 scale (module docstring)

        @pipeline_def(batch_size=c.batch_size, num_threads=c.workers, device_id=self.torch_device.index,
                      prefetch_queue_depth=c.prefetch, seed=c.seed)
        def graph():  # refers to feed and c, not to self: no cycle through the pipeline
            enc, frames, anchor, shape, mirror = fn.external_source(
                source=feed, num_outputs=5, batch=True,
                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32, types.INT32],
            )
            video = fn.decoders.video(enc, frames=frames, device=decode_device)  # (T, H, W, 3) uint8
            video = fn.slice(video, anchor, shape, axis_names="HW")  # (T, side, side, 3)
            video = fn.resize(video, size=[c.sample_size, c.sample_size])  # (T, S, S, 3) uint8
            return fn.crop_mirror_normalize(
                video, mirror=mirror, mean=list(mean), std=list(std), dtype=types.FLOAT, output_layout="CFHW",
            )  # (3, T, S, S) float32

        pipe = graph()
        pipe.build()
        return pipe

    def _finish_epoch(self) -> None:
        """End the pipeline's epoch: drain batches prefetched for an abandoned iteration, then reset."""
        if not self._in_epoch or self._pipe is None:
            return
        self._feed.batches = iter(())
        while True:
            try:
                self._pipe.run()
            except StopIteration:
                break
        self._pipe.reset()
        self._feed.emitted.clear()
        self._in_epoch = False

    def __iter__(self) -> Iterator[Batch]:
        import torch
        from nvidia.dali.plugin.pytorch import feed_ndarray

        self.check_open()
        self._finish_epoch()
        batches = self.batch_plans()
        if not batches:
            return
        self._feed.batches = iter(batches)
        self._in_epoch = True
        gpu = self.torch_device.type == "cuda"
        for _ in range(len(batches)):
            self.check_open()  # close() while this generator was suspended
            (out,) = self._pipe.run()
            bp = self._feed.emitted.popleft()
            tensor = out.as_tensor()  # (N, 3, T, S, S) float32, DALI-owned until the next run()
            clips = torch.empty(tensor.shape(), dtype=torch.float32, device=self.torch_device)
            stream = torch.cuda.current_stream(self.torch_device) if gpu else None
            feed_ndarray(tensor, clips, cuda_stream=stream)  # copy out; on GPU ordered on the current stream
            del out, tensor  # a suspended generator must hold no DALI object (close() frees the pipeline)
            labels = torch.from_numpy(self.labels[bp.rows]).to(self.torch_device, non_blocking=True)
            video_idx = torch.from_numpy(bp.rows.copy()).to(self.torch_device, non_blocking=True)
            yield Batch(clips, labels, video_idx)
        self._finish_epoch()

    def close(self) -> None:
        """Free the pipeline: this is its only reference, so DALI shuts it down and joins its threads here."""
        self._pipe = None
        self._in_epoch = False
        super().close()
