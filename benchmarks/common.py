"""What the benchmarks share: synthetic content, the machine and clocks they read, and the NVDEC backend's host
cost (host_pass).

The benchmark scripts put the repository root on sys.path and import this module as benchmarks.common. Nothing here
imports torch or the pipeline at import time (the scripts' parsers run without them).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


def has_cuda() -> bool:
    """Whether torch is installed and sees a GPU."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def cuda_sync() -> None:
    """Wait for the current GPU's queued work (before reading a clock)."""
    import torch

    torch.cuda.synchronize()


def cpu_seconds() -> float:
    """CPU seconds of this process so far, every thread (DALI's, the decoders', torch's), user and system."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def panning_texture(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """A random texture of 8x8-pixel blocks, wide enough for panning_frames' n frames: (H + 16, W + 2n + 16, 3)
    uint8 at most (block-rounded)."""
    tex = rng.integers(0, 256, (height // 8 + 2, (width + 2 * n) // 8 + 2, 3), dtype=np.uint8)
    return np.repeat(np.repeat(tex, 8, 0), 8, 1)


def panning_frames(tex: np.ndarray, n: int, width: int, height: int, i: int,
                   colour: tuple[int, int, int]) -> Iterator[np.ndarray]:
    """n frames (height, width, 3) uint8 of video i: the texture panning 2 px a frame, plus an 80x60 block of
    `colour` moving over it (3 px down, 5 px right a frame; where it starts depends on i): content an encoder has to
    work for."""
    for f in range(n):
        img = tex[:height, 2 * f:2 * f + width].copy()
        y, x = (3 * f) % (height - 60), (5 * f + 40 * i) % (width - 80)
        img[y:y + 60, x:x + 80] = colour
        yield img


def host_pass(loader: Any, max_clips: int | None = None) -> dict:
    """Everything the NVDEC backend's host does per clip before the decoder call, for the loader's current epoch,
    in this thread: the epoch plan (made anew: loader.make_plan; the loader's own plan is left as it is), each
    clip's packet slice (file read, Annex-B) and its decoder submissions. loader: a pipeline.backends.nvdec
    NvdecLoader (the CPU twin will do: nothing here decodes). Returns clips, packets, cpu_s and wall_s in total,
    and per clip in ms (process CPU time: run it with nothing else busy in this process)."""
    from pipeline.backends.nvdec_decoders import submissions
    from pipeline.bitstream import output_slots

    c0, w0 = time.process_time(), time.perf_counter()
    plan = loader.make_plan(loader.epoch)  # the plan's cost counts
    n = len(plan) if max_clips is None else min(len(plan), max_clips)
    packets = 0
    for r, fr in zip(plan.rows[:n].tolist(), plan.frames[:n], strict=True):
        clip, wanted = loader.cut(r, fr)
        packets += len(submissions(clip, np.frombuffer(clip.data, np.uint8)))
        output_slots(wanted)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    return {"clips": n, "packets": packets, "cpu_s": cpu, "wall_s": wall,
            "cpu_ms_per_clip": 1e3 * cpu / max(n, 1), "wall_ms_per_clip": 1e3 * wall / max(n, 1)}
