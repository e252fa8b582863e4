"""What the benchmarks share: the machine and clocks they read, and the NVDEC backend's host cost (host_pass).

The benchmark scripts put the repository root on sys.path and import this module as benchmarks.common.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np


def host_pass(loader: Any, max_clips: int | None = None) -> dict:
    """Everything the NVDEC backend's host does per clip before the decoder call, for the loader's current epoch,
    in this thread: the epoch plan (made anew: loader.make_plan; the loader's own plan is left as it is), each
    clip's packet slice (file read, Annex-B) and its decoder submissions. loader: a pipeline.backends.nvdec
    NvdecLoader (the CPU twin will do: nothing here decodes). Returns clips, packets, cpu_s and wall_s in total,
    and per clip in ms (process CPU time: run it with nothing else busy in this process)."""
    from pipeline.backends.nvdec_decoders import output_slots, submissions

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
