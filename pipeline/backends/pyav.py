"""PyAV backend ("pyav"): the CPU loader, built around the cost of decoding.

Per clip of the epoch plan (the same plan, frames, boxes and flips as every other backend), on one of
`workers` worker threads:
    packets keyframe_at_or_before(first frame) .. last frame   (pipeline/bitstream.py: clip_span, packet_slice:
        the cut the NVDEC backend feeds its decoders; one file read)
    -> the thread's own FFmpeg decoder (av.CodecContext, thread_count 1, kept for the loader's life and
       flushed after each clip; bitstream.decode_slice)
    -> each decoded frame the clip shows: kept until the other frames of its group of 4 are in, then the box's
       pixels of the 4 Y planes and the chroma samples around it of the 4 U and V planes copied out together,
       interleaved 4 frames per pixel (pipeline/kernels.py pack4, one call per plane and group; no conversion;
       pipeline/augment.py YUV420Clip, step 1); frames outside the clip (the lead-in from the keyframe) are
       decoded and dropped, never copied or converted
    -> after the clip's last frame: Y resized to S x S, U and V upsampled x2, cropped to the box and resized
       one axis at a time, 4 frames per call of torch's uint8 kernels (five calls per clip; steps 1-2)
    -> flip, colour conversion and normalisation at S x S (steps 3-5) in one pass from the packed planes
       straight into the batch (kernels.packed_to_rgb).
So the work per clip is the decoder's, plus ~1.5 crop-sized plane copies, one crop-sized resize and two
chroma upsamplings and resizes per shown frame, and the conversion of T x S x S pixels. Clips of a batch
decode in parallel, one per thread; PyAV (avcodec_send_packet and receive_frame), torch's ops, numpy's copies
and the compiled kernels release the GIL, and the Python between them is a few calls per frame.

Threads: exactly `workers` busy threads, each single-threaded inside: FFmpeg thread_count 1 (decoding more
clips at once costs less CPU per clip than more threads per clip), numpy and the numba kernels start no threads
(no BLAS call, no parallel loops), and torch's intra-op threads (OpenMP) are 1 in each worker
(torch.set_num_threads(1) as the worker starts: the OpenMP thread count is per thread, so the resizes start no
OpenMP team, and the calling thread keeps its own count).
torch.set_num_threads also sets the default of threads that first use torch later, so once the workers have
set theirs the loader sets that default back to what the iterating thread had (tests/test_pyav.py checks the
three). device="gpu": the clips' resized, flipped Y, U, V (uint8) are copied to the GPU and converted there
(augment.yuv_to_rgb), in the consumer's thread.

Memory: at most batch_size x prefetch clips are in flight (submitted and not yet delivered: the next batch is
submitted when the consumer asks for it, so while it works on one batch prefetch - 1 others decode); each is
written straight into its batch's output; a worker holds up to 4 decoded frames at a time (plus the decoder's
reference frames) and its clip's regions (T x side^2 x 1.5 bytes: 3.1 MB for a 360 px crop, and about as much
again while the chroma is upsampled).

Limits checked when the loader is built, from the packet index (`problems`; LoaderBase's bad-row policy: fail
naming the file, or skip and count): codecs FFmpeg decodes from a bare packet slice (SUPPORTED_CODECS); 8-bit
4:2:0 pixels (the first frame's bit depth and chroma format: what YUV420Clip copies and augment.py converts);
packet k must be frame k, so no frame reordering (B-frames) and every packet showing exactly one frame (no
VP8/VP9 hidden frame in a packet of its own). prepare_data.py writes all of these. At decode time, a wanted frame
that is not yuv420p at the index's size (a file whose frames change format or size after the first; a
full-range yuvj420p source, which the index does not tell apart) stops the epoch with one line naming the file.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np
import torch

from pipeline.augment import YUV420Clip, conversion, yuv_to_rgb
from pipeline.base import Batch, LoaderBase, LoaderConfig, first_problems
from pipeline.bitstream import DecodeError, clip_span, codec_context, decode_slice, packet_slice, slice_checks
from pipeline.index.table import PacketTable
from pipeline.manifest import HINT
from pipeline.sampling import Plan

SUPPORTED_CODECS = ("vp8", "vp9", "h264", "hevc")  # need no extradata beyond what packet_slice puts in front
FORMATS = ("yuv420p",)  # limited range 4:2:0: what augment.py's conversion assumes (prepare_data.py writes it)


def problems(config: LoaderConfig, packets: PacketTable) -> np.ndarray:
    """(V,) object array: why the pyav backend cannot decode row i ("" = it can), from the packet index: the
    first failing check of the module docstring's, each with its fix. config is not read (the limits are
    FFmpeg's and augment.py's, the same on any machine)."""
    p = packets
    codec = np.isin(p.codec, [k for k, name in enumerate(p.codecs) if name in SUPPORTED_CODECS])
    return first_problems(p, [  # (failing rows, message), by precedence
        (~codec, lambda r: (f"codec {p.codec_of(r)} is not read by the pyav backend ({', '.join(SUPPORTED_CODECS)}); "
                            "re-prepare with prepare_data.py --codec vp9, or use backend='decord'")),
        *slice_checks(p, "the pyav backend reads", also=", or use backend='decord'"),
    ])


def _one_torch_thread() -> None:
    """A worker thread's initializer: 1 intra-op thread for its torch ops. torch fixes a thread's count on its
    first parallel op from the process default (the last set_num_threads anywhere), so the count is read
    first (that fixes it), then set to 1 for this thread."""
    torch.get_num_threads()
    torch.set_num_threads(1)


class PyAVLoader(LoaderBase):
    """Backend "pyav" (module docstring). Worker threads: config.workers, started on the first iteration and
    kept until close(), each with its own decoders. In flight: at most batch_size x prefetch clips."""

    def __init__(self, config: LoaderConfig):
        super().__init__(config, problems)
        self._files = self.videos["file"].tolist()
        self._executor: ThreadPoolExecutor | None = None
        self._local = threading.local()  # .contexts: {codec: av.CodecContext} of this worker thread
        self._matrix = np.column_stack(conversion(config.normalisation))  # steps 4-5 on the CPU: A | b | lo | hi
        self.max_in_flight = 0  # the most clips ever in flight (tests check the bound)

    # -- per clip (worker threads) -------------------------------------------------------------------------------
    def _context(self, codec: str):
        """This thread's decoder for `codec`: made on first use, then kept (one per thread, never shared)."""
        contexts = getattr(self._local, "contexts", None)
        if contexts is None:
            contexts = self._local.contexts = {}
        return codec_context(contexts, codec)

    def _decode_clip(self, row: int, frames: np.ndarray, box: np.ndarray, flip: bool, out: np.ndarray) -> None:
        """Clip (row, frames (T,) file frame indices) -> out (3, T, S, S): float32 normalised RGB (steps 1-5), or
        uint8 resized Y, U, V (flipped; steps 1-3, for the GPU)."""
        ix = self.packets.video(row)
        first, last = clip_span(ix, frames)
        clip = packet_slice(self._files[row], ix, first, last)
        crops = YUV420Clip(box, flip, len(frames), out.shape[-1], clip.width, clip.height)

        def put(frame, positions: list[int]) -> None:  # a frame the clip shows: its planes, copied out once
            crops.put(positions[0], frame.planes)
            for t in positions[1:]:  # a looped clip shows it again
                crops.copy(positions[0], t)

        decode_slice(self._context(clip.codec), clip, frames - first, put, FORMATS)
        if out.dtype == np.uint8:
            crops.resize(out)
        else:
            crops.to_rgb(out, self._matrix)

    def _clip(self, i: int, row: int, frames: np.ndarray, box: np.ndarray, flip: bool, out) -> None:
        """Clip i of a batch into out: (N, 3, T, S, S) float32 normalised RGB (CPU) or uint8 Y, U, V (GPU)."""
        try:
            self._decode_clip(row, frames, box, flip, out[i])
        except (DecodeError, OSError, ValueError) as e:  # OSError, ValueError: the file changed since it was indexed
            raise DecodeError(f"{self._files[row]}: frames {int(frames.min())}..{int(frames.max())}: {e}. {HINT}") from None

    # -- per batch ----------------------------------------------------------------------------------------------
    def _new_batch(self, n: int):
        """(torch output, its numpy view for the workers): float32 clips on the CPU, uint8 Y, U, V for the GPU."""
        c = self.config
        shape = (n, 3, c.sample_duration, c.sample_size, c.sample_size)
        if self.torch_device.type == "cpu":
            out = torch.empty(shape, dtype=torch.float32)
        else:  # pinned: the copy to the GPU can overlap
            out = torch.empty(shape, dtype=torch.uint8, pin_memory=True)
        return out, out.numpy()

    def _assemble(self, bp: Plan, out) -> Batch:
        dev = self.torch_device
        if dev.type != "cpu":
            out = yuv_to_rgb(out.to(dev, non_blocking=True), self.config.normalisation)  # (N, 3, T, S, S)
        labels = torch.from_numpy(self.labels[bp.rows]).to(dev, non_blocking=True)
        video_idx = torch.from_numpy(bp.rows.copy()).to(dev, non_blocking=True)
        return Batch(out, labels, video_idx)

    def _start_workers(self) -> ThreadPoolExecutor:
        """config.workers worker threads, started now, each with one torch intra-op thread (module docstring)."""
        n = self.config.workers
        default = torch.get_num_threads()  # this thread's count (reading it fixes it: torch sets it on first use)
        started = threading.Barrier(n + 1, timeout=60)
        pool = ThreadPoolExecutor(n, thread_name_prefix="pyav", initializer=_one_torch_thread)
        for _ in range(n):  # each task holds its thread until all have started: n threads, each initialised
            pool.submit(started.wait)
        started.wait()
        torch.set_num_threads(default)  # the default of threads that use torch later: what it was, not the workers' 1
        return pool

    def __iter__(self) -> Iterator[Batch]:
        self.check_open()
        batches = self.batch_plans()
        if not batches:
            return
        if self._executor is None:
            self._executor = self._start_workers()
        pool, todo = self._executor, iter(batches)
        pending: deque[tuple[Plan, object, list[Future]]] = deque()
        in_flight = 0

        def submit(bp: Plan) -> None:
            nonlocal in_flight
            out, view = self._new_batch(len(bp))
            futures = [pool.submit(self._clip, i, int(r), fr, box, bool(fl), view)
                       for i, (r, fr, box, fl) in enumerate(zip(bp.rows, bp.frames, bp.boxes, bp.flips, strict=True))]
            pending.append((bp, out, futures))
            in_flight += len(bp)
            self.max_in_flight = max(self.max_in_flight, in_flight)

        try:
            for bp in itertools.islice(todo, self.config.prefetch):  # prefetch batches ahead
                submit(bp)
            while pending:
                bp, out, futures = pending[0]  # stays in pending until all its clips are in: a failed clip's
                for f in futures:  # batch is then waited for in `finally` with the ones ahead
                    f.result()  # raises the clip's DecodeError
                pending.popleft()
                in_flight -= len(bp)
                yield self._assemble(bp, out)
                self.check_open()  # close() while suspended: the pool is shut down
                # The consumer has this batch and asks for the next: only now may another batch start, so the
                # clips decoded or decoding ahead of it never exceed batch_size x prefetch.
                nxt = next(todo, None)
                if nxt is not None:
                    submit(nxt)
        finally:  # an abandoned or failed epoch: drop the clips not started, wait for the ones running, so
            # nothing decodes after the caller sees the end or the error, and nothing leaks into the next epoch
            started = [f for _, _, futures in pending for f in futures if not f.cancel()]
            wait(started)

    def close(self) -> None:
        """Stop the worker threads (their decoders go with them). Idempotent."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._local = threading.local()
        super().close()
