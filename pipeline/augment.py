"""The clip pixel operations, written once as batched torch functions (CPU or GPU, the same code).

    clips = augment_nv12(y, uv, sizes, boxes, flips, size=112, norm=PRESETS["kinetics"])   # decoder output (NVDEC)
    clips = augment_rgb(rgb, sizes, boxes, flips, size=112, norm=PRESETS["kinetics"])      # RGB frames (decord)
    # (N, 3, T, S, S) float32, on the frames' device

Per clip, with the parameters of the epoch plan (pipeline/sampling.py), in the order the DALI graph runs them:
 1. colour conversion (NV12 input only): YUV 4:2:0 -> RGB, rounded to 0..255 as a decoder's RGB output is;
 2. the integer crop box (x0, y0, side);
 3. resize side x side -> S x S with antialiasing: torch's interpolate(mode="bilinear", antialias=True,
    align_corners=False), the triangle filter of DALI's linear resize, rounded to 0..255 as DALI's uint8
    resize output is;
 4. horizontal flip;  5. the normalisation (pipeline/normalisation.py) as (x - mean) / std with its
    0-255-scale numbers (Normalisation.on_pixels), as DALI's crop_mirror_normalize is given them: for the
    default (value scale 255, std 1) the mean subtracted and nothing else.

Colour: BT.601 limited range (Y 16-235, Cb/Cr 16-240), the matrix FFmpeg, PyAV and DALI apply to these
untagged yuv420p videos, with exact (floating-point) coefficients and centre-sited bilinear chroma upsampling
(a chroma sample covers 2x2 luma pixels; a luma pixel takes 3/4 of its own chroma sample and 1/4 of the
nearer neighbour, per axis, clamped at the frame's edges). Measured on a lossless VP9 frame of uniformly
random Y, Cb and Cr (the worst case for chroma): DALI 2.4's CPU decoder output differs from this by at most
1 level (0.004 on average), so DALI is matched; PyAV's to_ndarray("rgb24") and decord (swscale's default
path: nearest-neighbour chroma, fixed-point coefficients) differ by up to 3 levels where chroma is flat and
far more at random chroma edges. On real frames the loaders agree to >= 40 dB PSNR (tests/test_nvdec.py).

Batching: the clips of a batch have different crop sides (5 scales per frame size), so they are processed
in groups of equal side: a group's crops are gathered from the frames in one indexing operation per plane
(no Python loop over clips), resized in one interpolate call, and written back to their places. Groups are
cut into chunks of clips that bound the float intermediates (`chunk_clips`). Why interpolate and not
resampling matrices (Wy @ crop @ Wx^T, exact too): a dense 360 -> 112 matrix product costs ~0.9 G
multiply-adds per 16-frame clip, the separable filter's nonzero taps ~40x fewer; and it is the reference
itself (tests check the grouping, cropping and flips against it clip by clip).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.normalisation import Normalisation

# BT.601: R = Y' + 2(1-Kr) Cr, B = Y' + 2(1-Kb) Cb, G = Y' - (2 Kb (1-Kb) Cb + 2 Kr (1-Kr) Cr) / Kg, with
# Y' = (Y - 16) * 255/219 and Cb, Cr = (U - 128), (V - 128) * 255/224 (limited range -> full range).
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_YS, _CS = 255.0 / 219.0, 255.0 / 224.0
YUV_TO_RGB = (  # rows R, G, B; columns Y - 16, U - 128, V - 128
    (_YS, 0.0, _CS * 2 * (1 - _KR)),
    (_YS, -_CS * 2 * (1 - _KB) * _KB / _KG, -_CS * 2 * (1 - _KR) * _KR / _KG),
    (_YS, _CS * 2 * (1 - _KB), 0.0),
)
CHUNK_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30}  # float intermediates per chunk of clips, by device type


def chunk_clips(frames: int, side: int, budget: int) -> int:
    """Clips per chunk so that one chunk's float intermediates, ~6 planes of (T, side, side) float32 per clip
    (Y, U, V, and R, G, B), stay near `budget` bytes; at least 1."""
    return max(1, budget // (frames * side * side * 4 * 6))


def _crop_grid(boxes: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, side) int64 luma rows y0 + 0..side-1 and columns x0 + 0..side-1 of each crop box (x0, y0, side)."""
    k = torch.arange(side, device=boxes.device).view(1, -1)
    return boxes[:, 1:2] + k, boxes[:, 0:1] + k


def nv12_crop_to_rgb(y: torch.Tensor, uv: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor,
                     side: int, idx: torch.Tensor) -> torch.Tensor:
    """Crop boxes of equal `side` from the NV12 frames of clips idx, colour-converted to RGB, rounded to 0..255.

    y: (N, T, Hp, Wp) uint8 luma; uv: (N, T, Hp/2, Wp) uint8, U and V interleaved (NV12's second plane).
    Clip n's frames fill the top-left (H_n, W_n) of its planes: sizes (N, 2) int64 (H_n, W_n), even.
    boxes: (N, 3) int64 (x0, y0, side), inside the frame. idx: (n,) int64 the clips to crop (all of side
    `side`; only their crops are read). Returns (n, T, 3, side, side) float32.
    """
    n, t = len(idx), y.shape[1]
    sizes, boxes = sizes[idx], boxes[idx]
    iy, ix = _crop_grid(boxes, side)  # (n, side) each
    ni, ti = idx.view(n, 1, 1), torch.arange(t, device=y.device).view(1, t, 1)

    def rows(plane: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # (n, T, side, Wp): whole rows, copied
        return plane[ni, ti, r.view(n, 1, side)]

    def cols(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (n, T, side, side): then the columns
        return x.gather(3, c.view(n, 1, 1, side).expand(n, t, side, side))

    # (Rows, then columns: on a CPU ~3x faster than one 4-D gather; the same bytes either way.)
    # Luma row r lies at chroma row r/2 - 1/4: between c = r // 2 and c - 1 (r even) or c + 1 (r odd), weights
    # 3/4 and 1/4 (clamped at the edges); the same along columns. Summed as integers x16, then divided: exact.
    cy, cx = iy // 2, ix // 2
    ny = torch.minimum(torch.where(iy % 2 == 0, cy - 1, cy + 1).clamp(min=0), sizes[:, 0:1] // 2 - 1)
    nx = torch.minimum(torch.where(ix % 2 == 0, cx - 1, cx + 1).clamp(min=0), sizes[:, 1:2] // 2 - 1)
    blend = rows(uv, cy).to(torch.int16) * 3 + rows(uv, ny)  # (n, T, side, Wp): 4 x the vertical blend

    def chroma(offset: int) -> torch.Tensor:  # offset 0: U (even bytes of a row), 1: V (odd bytes)
        return (cols(blend, 2 * cx + offset) * 3 + cols(blend, 2 * nx + offset)).float() / 16

    luma, u, v = cols(rows(y, iy), ix).float() - 16, chroma(0) - 128, chroma(1) - 128  # (n, T, side, side)
    rgb = [luma * ky + u * ku + v * kv for ky, ku, kv in YUV_TO_RGB]
    return torch.stack(rgb, dim=2).round_().clamp_(0, 255)  # (n, T, 3, side, side)


def rgb_crop(rgb: torch.Tensor, boxes: np.ndarray, idx: np.ndarray) -> torch.Tensor:
    """Crop boxes of equal side from the RGB frames of clips idx. rgb: (N, T, Hp, Wp, 3) uint8 (clip n in
    the top-left of its planes); boxes: (N, 3) int64 host array (x0, y0, side); idx: (n,) int64 host array.
    Returns (n, T, 3, side, side) float32. (Plain windows: sliced per clip, cheaper than a gather on CPU.)"""
    crops = [rgb[i, :, y0:y0 + s, x0:x0 + s] for i, (x0, y0, s) in zip(idx.tolist(), boxes[idx].tolist(), strict=True)]
    return torch.stack(crops).permute(0, 1, 4, 2, 3).float()  # (n, T, 3, side, side)


def resize_flip_normalize(crop: torch.Tensor, flips: torch.Tensor, size: int,
                          norm: Normalisation) -> torch.Tensor:
    """(N, T, 3, s, s) float32 crops with integer values -> (N, 3, T, S, S) float32: antialiased bilinear
    resize to S (skipped when s == S), rounded to 0..255, flipped where flips (N,) bool, normalised by norm."""
    n, t, _, s, _ = crop.shape
    x = crop.reshape(n * t, 3, s, s)
    if s != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = x.round_().clamp_(0, 255)  # DALI resizes to uint8
    x = x.view(n, t, 3, size, size)
    x = torch.where(flips.view(n, 1, 1, 1, 1), x.flip(-1), x)
    mean, std = norm.on_pixels()
    x = x - torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 1, 3, 1, 1)
    if std != (1.0, 1.0, 1.0):  # (the default divides by nothing: bit-identical to the mean alone)
        x = x / torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 1, 3, 1, 1)
    return x.permute(0, 2, 1, 3, 4)  # (N, 3, T, S, S)


def _grouped(crop_fn, n: int, t: int, boxes: np.ndarray, flips: np.ndarray, size: int,
             norm: Normalisation, device: torch.device) -> torch.Tensor:
    """Run crop_fn(clips (n_g,) int64 host array, the same on the device, side) -> (n_g, T, 3, side, side)
    over the clips in groups of equal side and chunks, then resize_flip_normalize; returns (N, 3, T, S, S)."""
    out = torch.empty((n, 3, t, size, size), dtype=torch.float32, device=device)
    flips_t = torch.from_numpy(np.ascontiguousarray(flips, dtype=bool)).to(device, non_blocking=True)
    for side in np.unique(boxes[:, 2]).tolist():
        group = np.flatnonzero(boxes[:, 2] == side)
        step = chunk_clips(t, side, CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"]))
        for a in range(0, len(group), step):
            idx = group[a:a + step]
            idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
            out[idx_t] = resize_flip_normalize(crop_fn(idx, idx_t, side), flips_t[idx_t], size, norm)
    return out


def _host_params(sizes, boxes, flips, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.asarray(sizes, dtype=np.int64).reshape(n, 2)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(n, 3)
    flips = np.asarray(flips, dtype=bool).reshape(n)
    x0, y0, s = boxes.T
    if n and ((s < 1).any() or (x0 < 0).any() or (y0 < 0).any() or (x0 + s > sizes[:, 1]).any()
              or (y0 + s > sizes[:, 0]).any()):
        raise ValueError(f"crop boxes (x0, y0, side) {boxes.tolist()} do not fit frames (H, W) {sizes.tolist()}")
    return sizes, boxes, flips


def augment_nv12(y: torch.Tensor, uv: torch.Tensor, sizes, boxes, flips, size: int,
                 norm: Normalisation) -> torch.Tensor:
    """NV12 decoder output -> clips: colour conversion, crop, resize, flip, normalisation (module docstring).

    y: (N, T, Hp, Wp) uint8; uv: (N, T, Hp/2, Wp) uint8 (U, V interleaved). Host arrays (the plan's; read
    without a device synchronisation): sizes (N, 2) (H_n, W_n) of each clip's frames, in the top-left of its
    planes, even; boxes (N, 3) (x0, y0, side) in pixels; flips (N,) bool; norm: the Normalisation. Returns
    (N, 3, T, size, size) float32 on y's device.
    """
    n, t = y.shape[:2]
    sizes, boxes, flips = _host_params(sizes, boxes, flips, n)
    sizes_t = torch.from_numpy(sizes).to(y.device, non_blocking=True)
    boxes_t = torch.from_numpy(boxes).to(y.device, non_blocking=True)

    def crop(idx: np.ndarray, idx_t: torch.Tensor, side: int) -> torch.Tensor:
        return nv12_crop_to_rgb(y, uv, sizes_t, boxes_t, side, idx_t)

    return _grouped(crop, n, t, boxes, flips, size, norm, y.device)


def augment_rgb(rgb: torch.Tensor, sizes, boxes, flips, size: int,
                norm: Normalisation) -> torch.Tensor:
    """RGB frames -> clips: crop, resize, flip, normalisation (module docstring).

    rgb: (N, T, Hp, Wp, 3) uint8. Host arrays: sizes (N, 2) (H_n, W_n) of each clip's frames (top-left of
    its planes); boxes (N, 3) (x0, y0, side); flips (N,) bool; norm as augment_nv12's. Returns
    (N, 3, T, size, size) float32 on rgb's device.
    """
    n, t = rgb.shape[:2]
    sizes, boxes, flips = _host_params(sizes, boxes, flips, n)

    def crop(idx: np.ndarray, idx_t: torch.Tensor, side: int) -> torch.Tensor:
        return rgb_crop(rgb, boxes, idx)

    return _grouped(crop, n, t, boxes, flips, size, norm, rgb.device)
