"""decord backend: a torch DataLoader whose items are whole batches of the epoch plan (the CPU baseline the
other backends are measured against). Same parameters as the DALI backend; decoding on CPU, for
device="gpu" the finished batch is moved to cuda:device_id.

Workers (LoaderConfig.workers processes; 0: decode in this process): started once per loader, on its first
iteration, with the forkserver start method (a fresh process forks them: never a fork of this process, which may
run DALI, CUDA or torch threads), and kept for every epoch (persistent_workers) until close(). They see each
epoch's plan because the plan travels with the items: the DataLoader's sampler yields the epoch's batch plans
(rows, frames, boxes, flips: ~1 KB a batch), and a worker's item is one batch plan, so no state is shared with the
workers. The first epoch waits for the forkserver and its workers, later epochs do not; the workers hold memory
of their own between epochs (benchmarks/RESULTS.md, "Persistent forkserver workers"). As with spawn, the workers
import the main module: a script that iterates a decord loader with workers needs the
`if __name__ == "__main__":` guard.

Per clip: decord.VideoReader.get_batch(frames) -> (T, H, W, 3) uint8 -> crop the box -> bilinear resize
with antialiasing (the same triangle filter as DALI's linear resize) -> rounded to 0..255 like DALI's
uint8 resize output -> flip -> normalisation -> (3, T, S, S) float32 (pipeline/augment.py: augment_rgb).
decord 0.6.0 cannot read frames 16, 24, 48 or 72 px wide (docs/design.md#format-facts): prepared videos are far
wider, tiny test videos must avoid them.

Memory bound. A DataLoader item is a whole batch: N x 3 x T x S x S float32 (N=64, T=16, S=112: 154 MB).
torch keeps at most workers x prefetch_factor batches in flight (being filled by a worker, or finished in
shared memory waiting for the consumer), so the loader holds about
    batch bytes x (batches_in_flight(workers) + 1 held by the consumer [+ 1 pinned copy for device="gpu"])
    + workers x ~0.2 GB of decode state (640x360 video; benchmarks/RESULTS.md, "Whole-epoch windows and memory")
prefetch_factor(workers) keeps workers x prefetch_factor <= MAX_BATCHES_IN_FLIGHT = 16 (but >= 1 per worker):
14 workers at N=64 hold 14 batches (2.2 GB), not torch's default 28 (4.3 GB). Each worker fills one
preallocated batch tensor in shared memory, clip by clip, and sends it without a copy: it never holds a list of
clips, their stack and a copy for the pipe at once.
"""

from __future__ import annotations

import multiprocessing
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from pipeline.base import Batch, LoaderBase, LoaderConfig
from pipeline.index.table import PacketTable
from pipeline.normalisation import Normalisation
from pipeline.sampling import Plan


def import_decord():  # -> the decord module
    """Import decord, loading PyAV first when it is installed.

    decord bundles its own FFmpeg libraries; when they are loaded before PyAV's, PyAV's libvpx-vp9 encoder no
    longer opens (avcodec_open2 returns EINVAL; av 18.1 + decord 0.6.0, tests/test_environment.py). So a
    process that reads with decord and then prepares or writes videos must have imported av first.
    """
    try:
        import av  # noqa: F401
    except ImportError:
        pass
    import decord

    return decord


def problems(config: LoaderConfig, packets: PacketTable) -> np.ndarray:
    """(V,) object array, all "": decord (FFmpeg) decodes every row the packet index could read."""
    return np.full(len(packets), "", object)


def transform_clip(frames: np.ndarray, box: tuple[int, int, int], flip: bool, size: int,
                   norm: Normalisation):  # -> torch.Tensor
    """(T, H, W, 3) uint8 frames -> (3, T, size, size) float32: crop box (x0, y0, side), resize, flip,
    normalisation, by pipeline/augment.py (the pixel operations written once, shared with the NVDEC backend)."""
    import torch

    from pipeline.augment import augment_rgb

    _, h, w, _ = frames.shape
    x = torch.from_numpy(np.ascontiguousarray(frames))[None]  # (1, T, H, W, 3)
    return augment_rgb(x, [[h, w]], [box], [flip], size, norm)[0]  # (3, T, S, S)


class _PlanDataset:
    """Map-style dataset whose index is a batch plan: dataset[bp] = (clips, labels, video_idx) tensors of the
    batch bp. Holds only what does not change between epochs (sent to each worker once)."""

    def __init__(self, files: list[str], labels: np.ndarray, size: int, norm: Normalisation, cache: int = 4):
        self.files, self.labels, self.size, self.norm = files, labels, size, norm
        self.cache_size = cache
        self._readers: OrderedDict[int, object] = OrderedDict()  # per worker: recently opened VideoReaders

    def _reader(self, row: int):
        decord = import_decord()
        vr = self._readers.pop(row, None)
        if vr is None:
            # num_threads=1: parallelism comes from DataLoader workers, not from each decoder.
            vr = decord.VideoReader(self.files[row], ctx=decord.cpu(0), num_threads=1)
        self._readers[row] = vr
        while len(self._readers) > self.cache_size:
            self._readers.popitem(last=False)
        return vr

    def __getitem__(self, bp: Plan):
        import torch

        t = bp.frames.shape[1]
        clips = torch.empty((len(bp.rows), 3, t, self.size, self.size), dtype=torch.float32)  # (N, 3, T, S, S)
        if torch.utils.data.get_worker_info() is not None:
            clips.share_memory_()  # filled in place and sent to the consumer without another copy
        for i, (r, fr, box, fl) in enumerate(zip(bp.rows, bp.frames, bp.boxes, bp.flips, strict=True)):
            frames = self._reader(int(r)).get_batch(list(map(int, fr))).asnumpy()
            clips[i] = transform_clip(frames, box, bool(fl), self.size, self.norm)
        return clips, torch.from_numpy(self.labels[bp.rows]), torch.from_numpy(bp.rows.copy())


class _EpochBatches:
    """The DataLoader's sampler: yields the current epoch's batch plans (set before each iteration). The
    DataLoader sends each to a worker as the item's index, so persistent workers need no other news of an epoch."""

    def __init__(self) -> None:
        self.batches: list[Plan] = []

    def __iter__(self) -> Iterator[Plan]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


MAX_BATCHES_IN_FLIGHT = 16  # across all DataLoader workers; see the module docstring


def prefetch_factor(workers: int) -> int | None:
    """DataLoader prefetch_factor: batches each worker may hold in flight (None without workers).

    At most torch's default 2, and workers x prefetch_factor <= MAX_BATCHES_IN_FLIGHT, but >= 1 (with more
    than 16 workers the workers themselves are the bound): 2 -> 2, 8 -> 2, 9..16 -> 1, 14 -> 1.
    """
    if workers == 0:
        return None
    return max(1, min(2, MAX_BATCHES_IN_FLIGHT // workers))


def batches_in_flight(workers: int) -> int:
    """Most batches built or queued by the workers at once (workers x prefetch_factor; 0 without workers)."""
    return workers * (prefetch_factor(workers) or 0)


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


class DecordLoader(LoaderBase):
    def __init__(self, config: LoaderConfig):
        try:  # before indexing: a missing package fails at once
            import_decord()
        except ImportError:
            raise ImportError(
                "backend='decord' needs decord: pip install decord==0.6.0, or use backend='dali'"
            ) from None
        super().__init__(config, problems)
        self._sampler = _EpochBatches()
        self._dataloader = None  # made on the first iteration: its workers then live until close()

    def _make_dataloader(self):  # -> torch.utils.data.DataLoader
        import torch

        c = self.config
        ds = _PlanDataset(self.videos["file"].tolist(), self.labels, c.sample_size, c.normalisation)
        workers = c.workers
        if workers > 0:
            # The forkserver (one per process, started by exec: it inherits no threads) forks the workers. What it
            # imports first, each worker has without importing it (av before decord: import_decord), which halves
            # the first epoch's wait (benchmarks/RESULTS.md, "Persistent forkserver workers"). A no-op once this
            # process's forkserver runs.
            multiprocessing.set_forkserver_preload(["__main__", "av", "decord", "torch", "pipeline.backends.decord"])
        # batch_size=None: an item is a whole batch, its index the batch plan (_EpochBatches).
        return torch.utils.data.DataLoader(
            ds, batch_size=None, sampler=self._sampler, num_workers=workers,
            pin_memory=self.torch_device.type == "cuda",
            worker_init_fn=_worker_init if workers > 0 else None,
            prefetch_factor=prefetch_factor(workers),  # memory bound: module docstring
            persistent_workers=workers > 0,
            multiprocessing_context="forkserver" if workers > 0 else None,
        )

    def __iter__(self) -> Iterator[Batch]:
        self.check_open()
        self._sampler.batches = self.batch_plans()  # before iter(): the workers are sent this epoch's plans
        if self._dataloader is None:
            self._dataloader = self._make_dataloader()
        gpu = self.torch_device.type == "cuda"
        # An abandoned epoch leaves batches in flight; the next iter() of a persistent DataLoader discards them.
        for clips, labels, video_idx in self._dataloader:
            if gpu:
                clips = clips.to(self.torch_device, non_blocking=True)
                labels = labels.to(self.torch_device, non_blocking=True)
                video_idx = video_idx.to(self.torch_device, non_blocking=True)
            yield Batch(clips, labels, video_idx)
            self.check_open()  # close() while suspended: its workers are gone (else a silent StopIteration)

    def close(self) -> None:
        """Stop the worker processes now (they would otherwise live until this loader is freed)."""
        dl, self._dataloader = self._dataloader, None
        workers = getattr(dl, "_iterator", None)  # torch keeps persistent workers here; it has no public close
        if workers is not None:
            dl._iterator = None
            workers._shutdown_workers()
        super().close()
