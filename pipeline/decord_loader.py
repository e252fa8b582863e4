"""decord backend: a torch DataLoader whose items are whole batches of the epoch plan (the baseline, and
the fallback where DALI is not installed). Same parameters as the DALI backend; decoding on CPU, for
device="gpu" the finished batch is moved to cuda:device_id.

Per clip: decord.VideoReader.get_batch(frames) -> (T, H, W, 3) uint8 -> crop the box -> bilinear resize
with antialiasing (the same triangle filter as DALI's linear resize) -> rounded to 0..255 like DALI's
uint8 resize output -> flip -> minus mean -> (3, T, S, S) float32.

Known decord 0.6.0 limit: get_batch fails ("Check failed: from_size == to_size") on frames 16, 24, 48 or 72 px
wide (checked every even width 16-258 at 32 px high, plus 202, 270, 426, 480, 640: only those four fail);
prepared videos are far wider, tiny test videos are not.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from pipeline.loader import Batch, LoaderBase
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


def transform_clip(frames: np.ndarray, box: tuple[int, int, int], flip: bool, size: int,
                   mean: tuple[float, float, float]):  # -> torch.Tensor
    """(T, H, W, 3) uint8 frames -> (3, T, size, size) float32: crop box (x0, y0, side), resize, flip, -mean."""
    import torch
    import torch.nn.functional as F

    x0, y0, side = (int(v) for v in box)
    x = torch.from_numpy(np.ascontiguousarray(frames[:, y0:y0 + side, x0:x0 + side]))  # (T, s, s, 3) uint8
    x = x.permute(0, 3, 1, 2).float()  # (T, 3, s, s)
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)  # DALI resizes to uint8
    if flip:
        x = x.flip(-1)
    x = x - torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    return x.permute(1, 0, 2, 3).contiguous()  # (3, T, S, S)


class _PlanDataset:
    """Map-style dataset: item k = batch k of the plan as (clips, labels, video_idx) tensors."""

    def __init__(self, files: list[str], labels: np.ndarray, batches: list[Plan], size: int,
                 mean: tuple[float, float, float], cache: int = 4):
        self.files, self.labels, self.batches, self.size, self.mean = files, labels, batches, size, mean
        self.cache_size = cache
        self._readers: OrderedDict[int, object] = OrderedDict()  # per worker: recently opened VideoReaders

    def __len__(self) -> int:
        return len(self.batches)

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

    def __getitem__(self, k: int):
        import torch

        bp = self.batches[k]
        clips = [
            transform_clip(self._reader(int(r)).get_batch(list(map(int, fr))).asnumpy(), box, bool(fl),
                           self.size, self.mean)
            for r, fr, box, fl in zip(bp.rows, bp.frames, bp.boxes, bp.flips, strict=True)
        ]
        return torch.stack(clips), torch.from_numpy(self.labels[bp.rows]), torch.from_numpy(bp.rows.copy())


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)


class DecordLoader(LoaderBase):
    def __iter__(self) -> Iterator[Batch]:
        import torch

        c = self.config
        ds = _PlanDataset(list(self.videos["file"]), self._labels, self._batch_plans(), c.sample_size, c.mean)
        gpu = self._torch_device.type == "cuda"
        # A fresh DataLoader per epoch: the workers must see this epoch's plan. batch_size=None: items are batches.
        dl = torch.utils.data.DataLoader(
            ds, batch_size=None, shuffle=False, num_workers=c.num_threads, pin_memory=gpu,
            worker_init_fn=_worker_init if c.num_threads > 0 else None,
            prefetch_factor=2 if c.num_threads > 0 else None,
        )
        for clips, labels, video_idx in dl:
            if gpu:
                clips = clips.to(self._torch_device, non_blocking=True)
                labels = labels.to(self._torch_device, non_blocking=True)
                video_idx = video_idx.to(self._torch_device, non_blocking=True)
            yield Batch(clips, labels, video_idx)
