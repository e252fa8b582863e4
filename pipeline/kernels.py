"""Compiled loops for the pyav backend's CPU clip path (numba): the two steps numpy and torch can only do as
several strided passes.

  pack4            step 1's copy: the same region of 4 frames' planes interleaved into one 4-channel buffer
                   (the layout torch's fast uint8 resize takes, pipeline/augment.py _on_cpu_layout): one
                   32-bit word per pixel, built from 4 bytes. numpy's assignment into one channel of that
                   layout writes 1 byte in 4 and takes ~6x the time (360 px box: 0.127 ms against 0.020 per 4
                   frames, one thread).
  packed_to_rgb    steps 3-5 from the resized planes as torch leaves them (4 frames packed per pixel): flip,
                   unpack, colour conversion, normalisation and clamp in one pass per row, writing the float
                   clip once. The numpy unpack and torch's cast, product, bias and clamps it replaces make 5
                   passes over the clip (112 px, 16 frames: 0.15-0.21 ms against 0.67, one thread).
benchmarks/RESULTS.md has the loader's numbers with and without them.

Both release the GIL (the pyav workers run them in parallel), start no threads, and compute in float32
without fast-math (no reassociation, no fused multiply-add): the same numbers on every x86 CPU, within 1e-4
of augment.convert_clip (torch's product: another order of the same float32 sums). The 4-byte words are read
and written little-endian (byte k = frame k of a group), which is every platform numba runs on. They are
compiled on their first call in a process (~1 s for both) and cached in pipeline/__pycache__ for the next
processes.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True, cache=True)
def pack4(p0, p1, p2, p3, y0, x0, dst):
    """dst (h, w) uint32 <- the regions [y0, y0 + h) x [x0, x0 + w) of the 2-D uint8 planes p0..p3, interleaved:
    byte k of each word from p_k."""
    h, w = dst.shape
    for r in range(h):
        a0, a1 = p0[y0 + r, x0:x0 + w], p1[y0 + r, x0:x0 + w]
        a2, a3 = p2[y0 + r, x0:x0 + w], p3[y0 + r, x0:x0 + w]
        d = dst[r]
        for x in range(w):
            d[x] = (np.uint32(a0[x]) | (np.uint32(a1[x]) << 8) | (np.uint32(a2[x]) << 16)
                    | (np.uint32(a3[x]) << 24))


@njit(nogil=True, cache=True)
def packed_to_rgb(y, c, flip, m, out):
    """out (3, T, S, S) float32 <- resized Y, U, V packed 4 frames per pixel: y (Q, S, S) uint32 (frame 4q + k
    in byte k of y[q]), c (2Q, S, S) uint32 (U of that frame in c[q], V in c[Q + q]); Q = ceil(T / 4).
    Per pixel and output channel i: clamp(m[i, 0] Y + m[i, 1] U + m[i, 2] V + m[i, 3], m[i, 4], m[i, 5])
    (augment.conversion's A, b, lo, hi); mirrored left-right when flip."""
    t_all, s = out.shape[1], out.shape[2]
    q_all = y.shape[0]
    a = m.astype(np.float32)
    word = np.empty(s, np.uint32)  # one row of a packed plane, mirrored when flip
    rows = np.empty((3, 4, s), np.float32)  # one row of Y, U, V for the group's 4 frames, unpacked
    for q in range(q_all):
        n = min(4, t_all - 4 * q)
        for r in range(s):
            for p, src in enumerate((y[q, r], c[q, r], c[q_all + q, r])):
                if flip:
                    for x in range(s):
                        word[x] = src[s - 1 - x]
                    src = word
                for k in range(4):
                    dst, shift = rows[p, k], 8 * k
                    for x in range(s):
                        dst[x] = np.float32((src[x] >> shift) & 255)
            for k in range(n):
                yy, uu, vv = rows[0, k], rows[1, k], rows[2, k]
                for i in range(3):
                    o = out[i, 4 * q + k, r]
                    a0, a1, a2, b, lo, hi = a[i, 0], a[i, 1], a[i, 2], a[i, 3], a[i, 4], a[i, 5]
                    for x in range(s):
                        o[x] = min(max(a0 * yy[x] + a1 * uu[x] + a2 * vv[x] + b, lo), hi)
