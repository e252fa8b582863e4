"""The clip pixel operations: one specification, three implementations that compute it.

Per clip, with the parameters of the epoch plan (pipeline/sampling.py: crop box (x0, y0, side) in luma pixels,
flip), output size S, for a decoder's YUV 4:2:0 frames (yuv420p or NV12):
 1. crop and resize in YUV: each plane's region of the crop box, [x0, x0 + side) x [y0, y0 + side) in luma
    pixels, which is [x0/2, (x0 + side)/2) x ... in the half-resolution chroma planes (a chroma sample covers
    2x2 luma pixels, centre-sited; the region starts half a sample in when x0 or y0 is odd), resampled to
    S x S with the antialiased bilinear (triangle) filter of PIL's Image.resize(size, BILINEAR, box=region):
    support max(scale, 1) input pixels either side, taps that fall outside the frame dropped and the rest
    renormalised, horizontal pass then vertical pass, each rounded half up to 0..255 (uint8). The same filter
    as torch's interpolate(mode="bilinear", antialias=True), DALI's linear resize and the PIL Resize of the
    authors' loader (3D-ResNets-PyTorch), whose crop is on RGB frames;
 2. horizontal flip;
 3. colour conversion at S x S: BT.601 limited range (Y 16-235, Cb/Cr 16-240) -> RGB, the matrix FFmpeg, PyAV
    and DALI apply to these untagged yuv420p videos (exact coefficients), clamped to [0, 255];
 4. the normalisation (pipeline/normalisation.py), (p - mean) / std on the 0-255 scale (Normalisation.on_pixels),
    folded into step 3's affine map: one matrix product and one clamp per clip.
Why this order: the decoder's frames are YUV, so the crop needs no conversion at all, only the crop's pixels
are resampled (1.5 planes at 4:2:0 instead of 3 RGB planes), and only S x S pixels are converted: per 360 px
clip ~1/10 of the colour conversions of "convert the frame, crop, resize". Fidelity against the paper's order
(whole frame to RGB, crop, resize, flip, mean) computed in float64 from the same decoded frames:
>= 40 dB PSNR on real content (tests/test_augment.py; ~55 dB measured on prepared real videos at 240 and 360 px).

RGB frames (decord, which converts on its own) take steps 1 (each of R, G, B as a luma-resolution plane), 2 and 4.

The implementations:
  yuv420_frame_resizer CPU, one clip's frames: PIL's resize on views of the decoder's planes (no copy of a
                       frame), in the calling thread (PIL releases the GIL while it resamples); the "pyav"
                       backend (resize_yuv420_clip: the same for a list of frames).
  augment_nv12         torch, batched, any device: the same taps computed in float (resize_taps), gathered
                       and summed; the NVDEC backend (GPU, and its CPU twin) and infer.py. Equal to the PIL
                       path within 1 level (fixed- vs floating-point coefficients; tests/test_augment.py).
  augment_rgb          torch, batched: RGB frames (the decord backend).
  yuv_to_rgb           steps 3-4 for a batch of resized YUV clips, any device (used by all of them).

Batching (torch): the clips of a batch have different crop sides (5 scales per frame size), so they are
processed in groups of equal side; a group's rows are gathered in one indexing operation per plane, then the
filter taps (at most 2 ceil(scale) + 1 per output pixel), and groups are cut into chunks of clips that bound
the float intermediates (`chunk_clips`). Taps, not dense resampling matrices: a dense 360 -> 112 product costs
~50x the multiply-adds of the filter's nonzero taps.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.normalisation import Normalisation, as_normalisation

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
YUV_OFFSET = (16.0, 128.0, 128.0)
CHUNK_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30}  # float intermediates per chunk of clips, by device type


def chunk_clips(frames: int, side: int, budget: int, size: int = 112) -> int:
    """Clips per chunk so that one chunk's largest float intermediate, the horizontal pass's taps
    (T, ~side, S, taps) float32 per plane, stays near `budget` bytes; at least 1."""
    taps = 2 * int(np.ceil(max(side / size, 1.0))) + 1
    return max(1, budget // (frames * (side + 2 * taps) * size * taps * 4 * 3))


# ---- the filter ------------------------------------------------------------------------------------------------


def resize_taps(start: float, length: float, extent: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's antialiased bilinear taps (Resample.c precompute_coeffs) for one axis.

    The region [start, start + length) of an axis of `extent` pixels (pixel j covers [j, j + 1)) resampled to
    `size` pixels. Returns (first (size,) int64: input index of each output's first tap, weights (size, K)
    float64: K = 2 ceil(support) + 1 taps, zero-padded, each row summing to 1). Output i has centre
    c = start + (i + 0.5) * scale, scale = length / size; support = max(scale, 1); its taps are the pixels j
    in [trunc(c - support + 0.5), trunc(c + support + 0.5)) inside the axis, weighted 1 - |j + 0.5 - c| / support.
    """
    scale = length / size
    support = max(scale, 1.0)
    k = 2 * int(np.ceil(support)) + 1
    centre = start + (np.arange(size) + 0.5) * scale
    lo = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    hi = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), extent)
    j = lo[:, None] + np.arange(k)  # (size, K)
    w = np.maximum(1.0 - np.abs((j + 0.5 - centre[:, None]) / support), 0.0) * (j < hi[:, None])
    total = w.sum(axis=1, keepdims=True)
    return lo, w / np.where(total > 0, total, 1.0)


def _round_u8(x: torch.Tensor) -> torch.Tensor:
    """Round half up and clamp to 0..255, in place: what PIL's 8-bit resample stores after each pass."""
    return x.add_(0.5).floor_().clamp_(0, 255)


def resize_planes(plane: torch.Tensor, idx: torch.Tensor, starts: np.ndarray, length: float,
                  extents: np.ndarray, size: int) -> torch.Tensor:
    """The crop regions of clips idx, resized: step 1 of the specification for one plane, batched.

    plane: (N, T, Hp, Wp) uint8 (may be a strided view, e.g. NV12's U or V columns); clip n's frame fills
    its top-left (H_n, W_n) = extents[n]. idx: (n,) int64 on plane's device; starts (n, 2) float64 host (x, y)
    of each region's top-left in this plane's pixels; length: the regions' side (equal in a group), in this
    plane's pixels; extents: (n, 2) int64 host (H, W). Returns (n, T, S, S) float32 holding integers 0..255.
    """
    n, t, dev = len(idx), plane.shape[1], plane.device
    fx = [resize_taps(float(x), length, int(w), size) for x, w in zip(starts[:, 0], extents[:, 1], strict=True)]
    fy = [resize_taps(float(y), length, int(h), size) for y, h in zip(starts[:, 1], extents[:, 0], strict=True)]
    kx, ky = fx[0][1].shape[1], fy[0][1].shape[1]
    first_x = np.stack([f for f, _ in fx])  # (n, S)
    first_y = np.stack([f for f, _ in fy])
    row0 = first_y[:, 0]  # taps move right with i: the first output's first tap is the clip's top row
    rows_needed = int((first_y[:, -1] + ky - row0).max())
    rows = torch.from_numpy(row0[:, None] + np.arange(rows_needed)).to(dev).clamp_(max=plane.shape[2] - 1)
    cols = torch.from_numpy(first_x[:, :, None] + np.arange(kx)).to(dev).clamp_(max=plane.shape[3] - 1)
    wx = torch.from_numpy(np.stack([w for _, w in fx])).float().to(dev)  # (n, S, Kx)
    wy = torch.from_numpy(np.stack([w for _, w in fy])).float().to(dev)  # (n, S, Ky)
    # Rows, then the columns' taps (a clamped index past the frame carries weight 0).
    x = plane[idx.view(n, 1, 1), torch.arange(t, device=dev).view(1, t, 1), rows.view(n, 1, -1)]  # (n, T, R, Wp)
    x = x.gather(3, cols.view(n, 1, 1, size * kx).expand(n, t, rows_needed, size * kx)).float()
    h = _round_u8((x.view(n, t, rows_needed, size, kx) * wx.view(n, 1, 1, size, kx)).sum(-1))  # (n, T, R, S)
    ry = torch.from_numpy(first_y - row0[:, None]).to(dev)[:, :, None] + torch.arange(ky, device=dev)  # (n, S, Ky)
    v = h.gather(2, ry.clamp_(max=rows_needed - 1).view(n, 1, size * ky, 1).expand(n, t, size * ky, size))
    return _round_u8((v.view(n, t, size, ky, size) * wy.view(n, 1, size, ky, 1)).sum(3))  # (n, T, S, S)


# ---- colour and normalisation -----------------------------------------------------------------------------------


def conversion(norm: Normalisation | Sequence[float], yuv: bool = True) -> tuple[np.ndarray, np.ndarray,
                                                                                 np.ndarray, np.ndarray]:
    """Steps 3-4 as one affine map and a clamp: out = clamp(A @ p + b, lo, hi) per pixel p (3 values).

    yuv: p is (Y, U, V) (A = the BT.601 matrix with the normalisation folded in); else p is RGB (A diagonal).
    Returns A (3, 3), b (3,), lo (3,), hi (3,) float64: lo/hi are 0 and 255 normalised, so the clamp is
    clamp-to-[0, 255] before normalising (the scale 1/std is positive)."""
    mean, std = (np.array(v, np.float64) for v in as_normalisation(norm).on_pixels())
    a = np.array(YUV_TO_RGB) if yuv else np.eye(3)
    off = -(a @ np.array(YUV_OFFSET)) if yuv else np.zeros(3)
    return a / std[:, None], (off - mean) / std, (0 - mean) / std, (255 - mean) / std


def yuv_to_rgb(yuv: torch.Tensor, norm: Normalisation | Sequence[float], out: torch.Tensor | None = None,
               is_yuv: bool = True) -> torch.Tensor:
    """Steps 3-4 for resized clips: (N, 3, T, S, S) Y, U, V (uint8, or float holding 0..255) -> (N, 3, T, S, S)
    float32 normalised RGB (into `out` when given). is_yuv=False: the input is already RGB (normalise only)."""
    a, b, lo, hi = (torch.tensor(v, dtype=torch.float32, device=yuv.device) for v in conversion(norm, is_yuv))
    n = yuv.shape[0]
    if out is None:
        out = torch.empty(yuv.shape, dtype=torch.float32, device=yuv.device)
    for i in range(n):  # one (3, 3) x (3, T*S*S) product per clip: no (N, 3, P) temporaries
        x = yuv[i].reshape(3, -1)
        o = out[i].view(3, -1)
        torch.addmm(b.view(3, 1), a, x.float() if x.dtype != torch.float32 else x, out=o)
        torch.clamp(o, lo.view(3, 1), hi.view(3, 1), out=o)
    return out


# ---- CPU, one clip at a time: PIL on the decoder's planes --------------------------------------------------------


def resize_plane_pil(plane, width: int, height: int, stride: int, region: tuple[float, float, float, float],
                     size: int) -> np.ndarray:
    """One plane's crop region resized by PIL (step 1): plane is any buffer of `height` rows of `stride` bytes
    (e.g. an av.VideoPlane, read in place); region (left, top, right, bottom) in its pixels, fractions
    allowed. Returns (size, size) uint8."""
    from PIL import Image

    im = Image.frombuffer("L", (width, height), plane, "raw", "L", stride, 1)
    return np.asarray(im.resize((size, size), Image.Resampling.BILINEAR, box=region))


def yuv420_regions(box: Sequence[int]) -> tuple[tuple[float, float, float, float], ...]:
    """The crop box (x0, y0, side) in luma pixels as PIL regions of the Y, U and V planes."""
    x0, y0, s = (int(v) for v in box)
    luma = (x0, y0, x0 + s, y0 + s)
    chroma = (x0 / 2, y0 / 2, (x0 + s) / 2, (y0 + s) / 2)
    return luma, chroma, chroma


def yuv420_frame_resizer(box: Sequence[int], flip: bool, size: int):
    """Steps 1-2 for the frames of one clip on the CPU, set up once per clip: returns resize(frame, out) that
    writes a decoded yuv420p frame's (an av.VideoFrame, or any object with three `planes` that have width,
    height, line_size and the buffer protocol) resized Y, U, V into out (3, S, S) uint8, flipped when `flip`.
    The planes are read in place; the per-frame Python is a few calls per plane (it holds the GIL)."""
    from PIL import Image

    regions = yuv420_regions(box)
    frombuffer, bilinear, shape = Image.frombuffer, Image.Resampling.BILINEAR, (size, size)

    def resize(frame, out: np.ndarray) -> None:
        for c, plane in enumerate(frame.planes):
            im = frombuffer("L", (plane.width, plane.height), plane, "raw", "L", plane.line_size, 1)
            r = np.asarray(im.resize(shape, bilinear, regions[c]))
            out[c] = r[:, ::-1] if flip else r

    return resize


def resize_yuv420_clip(frames: Sequence, box: Sequence[int], flip: bool, size: int, out: np.ndarray) -> None:
    """Steps 1-2 for one clip on the CPU: frames (T decoded yuv420p frames, as yuv420_frame_resizer takes; the
    same object may appear several times, as in a looped clip: resized once) -> out (3, T, S, S) uint8, Y, U,
    V, flipped when `flip`."""
    resize = yuv420_frame_resizer(box, flip, size)
    done: dict[int, int] = {}  # id(frame) -> the first t that holds it
    for t, f in enumerate(frames):
        if id(f) in done:
            out[:, t] = out[:, done[id(f)]]
            continue
        done[id(f)] = t
        resize(f, out[:, t])


# ---- torch, batched: NV12 (NVDEC, infer.py) and RGB (decord) ---------------------------------------------------------


def _host_params(sizes, boxes, flips, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sizes = np.asarray(sizes, dtype=np.int64).reshape(n, 2)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(n, 3)
    flips = np.asarray(flips, dtype=bool).reshape(n)
    x0, y0, s = boxes.T
    if n and ((s < 1).any() or (x0 < 0).any() or (y0 < 0).any() or (x0 + s > sizes[:, 1]).any()
              or (y0 + s > sizes[:, 0]).any()):
        raise ValueError(f"crop boxes (x0, y0, side) {boxes.tolist()} do not fit frames (H, W) {sizes.tolist()}")
    return sizes, boxes, flips


def _grouped(planes_fn, n: int, t: int, boxes: np.ndarray, flips: np.ndarray, size: int,
             norm: Normalisation | Sequence[float], device: torch.device, is_yuv: bool) -> torch.Tensor:
    """Run planes_fn(clips (n_g,) int64 host array, the same on the device, side) -> (n_g, 3, T, S, S) resized
    float planes over the clips in groups of equal side and chunks, then flip, yuv_to_rgb; (N, 3, T, S, S)."""
    out = torch.empty((n, 3, t, size, size), dtype=torch.float32, device=device)
    for side in np.unique(boxes[:, 2]).tolist():
        group = np.flatnonzero(boxes[:, 2] == side)
        step = chunk_clips(t, side, CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"]), size)
        for a in range(0, len(group), step):
            idx = group[a:a + step]
            idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
            x = planes_fn(idx, idx_t, side)  # (n_g, 3, T, S, S)
            flip = torch.from_numpy(flips[idx]).to(device, non_blocking=True).view(-1, 1, 1, 1, 1)
            out[idx_t] = yuv_to_rgb(torch.where(flip, x.flip(-1), x), norm, is_yuv=is_yuv)
    return out


def augment_nv12(y: torch.Tensor, uv: torch.Tensor, sizes, boxes, flips, size: int,
                 norm: Normalisation | Sequence[float]) -> torch.Tensor:
    """NV12 decoder output -> clips: the specification (module docstring), batched in torch on y's device.

    y: (N, T, Hp, Wp) uint8; uv: (N, T, Hp/2, Wp) uint8 (U, V interleaved). Host arrays (the plan's; read
    without a device synchronisation): sizes (N, 2) (H_n, W_n) of each clip's frames, in the top-left of its
    planes, even; boxes (N, 3) (x0, y0, side) in pixels; flips (N,) bool. norm: a Normalisation, or 3
    numbers (a mean subtracted from 0-255 pixels). Returns (N, 3, T, size, size) float32 on y's device.
    """
    n, t = y.shape[:2]
    sizes, boxes, flips = _host_params(sizes, boxes, flips, n)
    u, v = uv[..., 0::2], uv[..., 1::2]  # (N, T, Hp/2, Wp/2) strided views

    def planes(idx: np.ndarray, idx_t: torch.Tensor, side: int) -> torch.Tensor:
        luma = boxes[idx, :2].astype(np.float64)
        chroma_sizes = (sizes[idx] + 1) // 2
        return torch.stack([resize_planes(y, idx_t, luma, side, sizes[idx], size),
                            resize_planes(u, idx_t, luma / 2, side / 2, chroma_sizes, size),
                            resize_planes(v, idx_t, luma / 2, side / 2, chroma_sizes, size)], dim=1)

    return _grouped(planes, n, t, boxes, flips, size, norm, y.device, is_yuv=True)


def augment_rgb(rgb: torch.Tensor, sizes, boxes, flips, size: int,
                norm: Normalisation | Sequence[float]) -> torch.Tensor:
    """RGB frames -> clips: steps 1 (per channel), 2 and 4 of the specification, batched in torch.

    rgb: (N, T, Hp, Wp, 3) uint8. Host arrays: sizes (N, 2) (H_n, W_n) of each clip's frames (top-left of
    its planes); boxes (N, 3) (x0, y0, side); flips (N,) bool; norm as augment_nv12's. Returns
    (N, 3, T, size, size) float32 on rgb's device.
    """
    n, t = rgb.shape[:2]
    sizes, boxes, flips = _host_params(sizes, boxes, flips, n)

    def planes(idx: np.ndarray, idx_t: torch.Tensor, side: int) -> torch.Tensor:
        starts = boxes[idx, :2].astype(np.float64)
        return torch.stack([resize_planes(rgb[..., c], idx_t, starts, side, sizes[idx], size) for c in range(3)],
                           dim=1)

    return _grouped(planes, n, t, boxes, flips, size, norm, rgb.device, is_yuv=False)


# ---- whole frames (references and tests; not on any clip path) --------------------------------------------------


def nv12_crop_to_rgb(y: torch.Tensor, uv: torch.Tensor, sizes: torch.Tensor, boxes: torch.Tensor,
                     side: int, idx: torch.Tensor) -> torch.Tensor:
    """Crop boxes of equal `side` from the NV12 frames of clips idx, colour-converted to RGB at full resolution
    (chroma upsampled bilinearly, centre-sited: a luma pixel takes 3/4 of its own chroma sample and 1/4 of
    the nearer neighbour per axis, clamped at the edges), rounded to 0..255 as a decoder's RGB output is. The
    "frames as RGB" of the paper's order, for references and tests.

    y: (N, T, Hp, Wp) uint8; uv: (N, T, Hp/2, Wp) uint8 (U, V interleaved); sizes (N, 2) int64 (H_n, W_n);
    boxes (N, 3) int64 (x0, y0, side) inside the frame; idx (n,) int64. Returns (n, T, 3, side, side) float32.
    """
    n, t = len(idx), y.shape[1]
    sizes, boxes = sizes[idx], boxes[idx]
    k = torch.arange(side, device=boxes.device).view(1, -1)
    iy, ix = boxes[:, 1:2] + k, boxes[:, 0:1] + k  # (n, side) luma rows and columns
    ni, ti = idx.view(n, 1, 1), torch.arange(t, device=y.device).view(1, t, 1)

    def rows(plane: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # (n, T, side, Wp)
        return plane[ni, ti, r.view(n, 1, side)]

    def cols(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:  # (n, T, side, side)
        return x.gather(3, c.view(n, 1, 1, side).expand(n, t, side, side))

    # Luma row r lies at chroma row r/2 - 1/4: between c = r // 2 and c - 1 (r even) or c + 1 (r odd), weights
    # 3/4 and 1/4 (clamped at the edges); the same along columns. Summed as integers x16, then divided: exact.
    cy, cx = iy // 2, ix // 2
    ny = torch.minimum(torch.where(iy % 2 == 0, cy - 1, cy + 1).clamp(min=0), sizes[:, 0:1] // 2 - 1)
    nx = torch.minimum(torch.where(ix % 2 == 0, cx - 1, cx + 1).clamp(min=0), sizes[:, 1:2] // 2 - 1)
    blend = rows(uv, cy).to(torch.int16) * 3 + rows(uv, ny)

    def chroma(offset: int) -> torch.Tensor:  # offset 0: U (even bytes of a row), 1: V (odd bytes)
        return (cols(blend, 2 * cx + offset) * 3 + cols(blend, 2 * nx + offset)).float() / 16

    luma, u, v = cols(rows(y, iy), ix).float() - 16, chroma(0) - 128, chroma(1) - 128
    rgb = [luma * ky + u * ku + v * kv for ky, ku, kv in YUV_TO_RGB]
    return torch.stack(rgb, dim=2).round_().clamp_(0, 255)  # (n, T, 3, side, side)
