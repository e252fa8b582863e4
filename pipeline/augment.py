"""The clip pixel operations: one specification, and the code that computes it on the CPU and on the GPU.

Per clip, with the parameters of the epoch plan (pipeline/sampling.py: crop box (x0, y0, side), integers in luma
pixels; flip) and the output size S, for a decoder's YUV 4:2:0 frames (yuv420p or NV12):
 1. crop each plane to the box at luma resolution: Y [x0, x0 + side) x [y0, y0 + side); U and V upsampled x2
    first, centre-sited bilinear (a luma pixel takes 3/4 of the chroma sample it lies in and 1/4 of the
    nearer neighbour, per axis, clamped at the frame's edges: the upsampling of the decoder's RGB conversion,
    nv12_crop_to_rgb), computed only over the chroma samples around the box (chroma_region), then cropped to
    the same box (upsampling, crop and step 2 are all separable, so the code does them one axis at a time:
    _chroma_steps);
 2. resize each cropped plane to S x S with the antialiased bilinear (triangle) filter, the crop alone:
    output i has centre c = (i + 1/2) * scale in the crop (scale = side / S), its taps are the crop's pixels j
    with |j + 1/2 - c| < support = max(scale, 1), weighted 1 - |j + 1/2 - c| / support and normalised to sum
    1 (taps that would fall outside the crop are dropped, never read); horizontal pass, then vertical; rounded
    to 0..255. That is torch.nn.functional.interpolate(mode="bilinear", antialias=True, align_corners=False)
    and PIL's Image.resize(BILINEAR) of the cropped image: the authors' order (3D-ResNets-PyTorch crops, then
    PIL-Resizes). Rounding: on the CPU torch's uint8 kernels (fixed-point weights, each pass rounded to uint8,
    the chroma upsampling's too; AVX2 when 3 or 4 planes lie channels-last, hence the packing below),
    elsewhere (GPU) float, rounded once at the end: within 1 level of each other for Y, 2 for U and V
    (tests/test_augment.py);
 3. horizontal flip;
 4. colour conversion at S x S: BT.601 limited range (Y 16-235, Cb/Cr 16-240) -> RGB, the matrix FFmpeg, PyAV
    and DALI apply to these untagged yuv420p videos (exact coefficients), clamped to [0, 255];
 5. the normalisation (pipeline/normalisation.py), (p - mean) / std on the 0-255 scale (Normalisation.on_pixels),
    folded into step 4's affine map: one 3 x 3 product, one offset and one clamp per pixel (conversion()).
This is the paper's order (whole frame to RGB, crop, resize, flip, mean) with the colour conversion, a linear
map per pixel, moved after the linear resampling: the two commute up to the clamp and the roundings, so
against the paper's order computed in float64 from the same decoded frames the clips reach 50 dB PSNR (worst
box) on textured content with saturated colour edges, 44 dB worst and 51-52 median on real videos prepared at
240 and 360 px (>= 40 dB is the bar: tests/test_augment.py, test_pyav.py; benchmarks/RESULTS.md). What
the order saves: the crop needs no conversion, only the box's pixels are resampled, and only S x S pixels are
converted: per 360 px clip ~1/10 of the colour conversions of "convert the frame, crop, resize". Resizing the
chroma planes at their own resolution instead (half-resolution crops to S x S, no upsampling) costs ~1 ms
less per 360 px clip on the CPU but cannot register a box that starts on an odd pixel (interpolate has no
sub-pixel offset): 34 dB on the same content, below the bar.

RGB frames (decord, which converts on its own) take steps 1-2 with R, G, B as luma-resolution planes, 3 and 5.

The code:
  chroma_region   step 1's chroma samples around a box.
  resize_crops    step 2 for crops of one size, (M, C, h, w) uint8, on any device (the CPU's uint8 kernel on
                  the CPU, float elsewhere); resize_chroma: steps 1-2 for chroma regions.
  YUV420Clip      steps 1-5 for one clip on the CPU, fed by a decoder frame by frame (the "pyav" backend):
                  each plane's region is copied once, straight from the decoder's planes, 4 frames at a time,
                  into buffers that pack 4 frames per pixel channels-last (16 Y crops: (4, side, side, 4) uint8;
                  pipeline/kernels.py pack4), then five kernel calls per clip (Y: resize; U, V: _chroma_steps),
                  then flip, conversion and normalisation in one compiled pass (kernels.packed_to_rgb), or the
                  flipped uint8 planes for a GPU to convert. torch ops run with the calling thread's intra-op
                  threads (the pyav workers set 1).
  augment_nv12    steps 1-5, batched in torch on any device: NVDEC (GPU, and its CPU twin) and infer.py.
  augment_rgb     RGB frames (the decord backend).
  conversion, convert_clip, yuv_to_rgb   steps 4-5.
Batching (torch): the clips of a batch have different crop sides (5 scales per frame size), so they are
processed in groups of equal crop geometry, cut into chunks of clips that bound the intermediates
(chunk_clips).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
YUV_OFFSET = (16.0, 128.0, 128.0)
CHUNK_BYTES = {"cpu": 256 * 2**20, "cuda": 2**30}  # intermediates per chunk of clips, by device type
UINT8_KERNELS = ("cpu",)  # device types where step 2 runs torch's uint8 kernels; elsewhere float32 (no uint8 kernel)


def chunk_clips(frames: int, side: int, budget: int) -> int:
    """Clips per chunk so that a chunk's intermediates stay near `budget` bytes; at least 1. Counted per luma
    pixel of a clip's crops: 3 planes (chroma upsampled) x (a uint8 crop and its float32 or packed copy, about
    5 bytes) + the chroma regions: ~16 bytes."""
    return max(1, budget // (frames * side * side * 16))


# ---- steps 1-2: crop, resize -----------------------------------------------------------------------------------


def chroma_region(box: Sequence[int], width: int, height: int) -> tuple[int, int, int, int, int, int]:
    """Step 1's chroma samples for the crop box (x0, y0, side) of a width x height frame: (cx0, cy0, cw, ch, ox,
    oy). Chroma samples [cx0, cx0 + cw) x [cy0, cy0 + ch) (of the (width + 1) // 2 x (height + 1) // 2 plane)
    hold every sample the box's upsampled pixels read (luma pixel x reads samples floor(x / 2 - 1/4) and the
    next), and the box starts at (ox, oy) in their x2 upsampling. Inside the frame this region's upsampling
    equals the whole plane's; at the frame's edges both clamp."""
    x0, y0, s = (int(v) for v in box)

    def axis(a: int, n: int) -> tuple[int, int, int]:
        lo, hi = max(a // 2 - 1, 0), min((a + s) // 2 + 1, (n + 1) // 2)
        return lo, hi - lo, a - 2 * lo

    (cx0, cw, ox), (cy0, ch, oy) = axis(x0, int(width)), axis(y0, int(height))
    return cx0, cy0, cw, ch, ox, oy


def _interpolate(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Step 2's filter (module docstring): (M, C, h, w) -> (M, C, *size) (size: S for S x S), the input's dtype
    and layout."""
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def _chroma_steps(x: torch.Tensor, ox: int, oy: int, side: int, size: int) -> torch.Tensor:
    """Steps 1-2 for chroma regions (M, C, ch, cw) -> (M, C, size, size), the input's dtype and layout: per axis,
    x then y, upsample x2 (centre-sited bilinear, clamped at the edges), crop to the box [o, o + side), resize
    with step 2's filter. Each of these is separable, so this is "upsample, crop, resize" done one axis at a
    time: on a 360 px clip ~0.8 ms less CPU than upsampling both axes first (the data stays S wide after the
    first axis). The x2 upsampling is step 2's filter too: at scale 1/2 its support is 1 pixel, so output i
    (centre (i + 1/2) / 2) takes 3/4 and 1/4 of the two nearest samples, and at the edges the dropped tap leaves
    the edge sample alone: bilinear with align_corners=False exactly (and torch's uint8 kernel for it is ~15 %
    faster than the non-antialiased one; the same numbers, tests/test_augment.py)."""
    ch, cw = x.shape[-2:]
    x = _interpolate(x, (ch, 2 * cw))[..., ox:ox + side]
    x = _interpolate(x, (ch, size))
    x = _interpolate(x, (2 * ch, size))[..., oy:oy + side, :]
    return _interpolate(x, size)


def _on_cpu_layout(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """fn, a chain of torch's uint8 kernels taking (M', 4 or 3, h, w) channels-last uint8, applied to (M, C, h, w)
    uint8 CPU crops: as they are when C is 3 or 4 (one copy unless already channels last), else the M x C
    planes repacked 4 per sample (one copy; the spare planes of a last, partial sample are never read back).
    Torch's uint8 kernels take this layout (AVX2) at ~1/8 of the CPU time of one plane per sample (measured:
    16 crops of 302 px -> 112, 0.26 ms against 2 ms). Returns fn's output as (M, C, h', w')."""
    m, c, h, w = x.shape
    if c in (3, 4):
        return fn(x.contiguous(memory_format=torch.channels_last))
    planes, p = x.reshape(m * c, h, w), m * c
    full, q = p // 4, -(-p // 4)
    buf = torch.empty((q, h, w, 4), dtype=torch.uint8)
    buf[:full] = planes[:4 * full].view(full, 4, h, w).permute(0, 2, 3, 1)
    if q > full:
        buf[full, :, :, :p - 4 * full] = planes[4 * full:].permute(1, 2, 0)
    out = fn(buf.permute(0, 3, 1, 2))
    return out.reshape(4 * q, *out.shape[2:])[:p].view(m, c, *out.shape[2:])


def resize_crops(x: torch.Tensor, size: int) -> torch.Tensor:
    """Step 2: crops of one size (M, C, h, w) uint8, any memory format and device -> (M, C, S, S) uint8: torch's
    uint8 kernel on the CPU (UINT8_KERNELS), float32 rounded once (half to even) elsewhere."""
    if x.device.type not in UINT8_KERNELS:
        return _interpolate(x.float(), size).round_().clamp_(0, 255).to(torch.uint8)
    return _on_cpu_layout(lambda b: _interpolate(b, size), x)


def resize_chroma(x: torch.Tensor, ox: int, oy: int, side: int, size: int) -> torch.Tensor:
    """Steps 1-2 for chroma: (M, C, ch, cw) uint8 chroma regions (chroma_region's), any device -> (M, C, S, S)
    uint8: upsampled x2, the box [oy, oy + side) x [ox, ox + side) of that resized to S x S (_chroma_steps).
    CPU: uint8 kernels (each pass rounded); elsewhere float32, rounded once."""
    if x.device.type not in UINT8_KERNELS:
        return _chroma_steps(x.float(), ox, oy, side, size).round_().clamp_(0, 255).to(torch.uint8)
    return _on_cpu_layout(lambda b: _chroma_steps(b, ox, oy, side, size), x)


def _unpack(src: np.ndarray, dst: np.ndarray, flip: bool) -> None:
    """(q, 4, S, S) resized planes packed 4 per sample (any strides) -> dst (P, S, S) contiguous, P <= 4q: plane
    k = src[k // 4, k % 4], mirrored left-right when `flip` (step 3; a strided read, no extra pass)."""
    p, s = dst.shape[0], dst.shape[-1]
    full = p // 4
    if flip:
        src = src[..., ::-1]
    dst[:4 * full].reshape(full, 4, s, s)[...] = src[:full]
    if p > 4 * full:
        dst[4 * full:] = src[full, :p - 4 * full]


class YUV420Clip:
    """Steps 1-3 (and, for float output, 4-5) for one clip on the CPU, fed frame by frame (the pyav backend's
    workers).

    put(t, planes) takes frame t's Y, U, V planes (each with the buffer protocol and `line_size`, e.g. an
    av.VideoPlane, read in place); the regions of each group of 4 frames (t // 4) are copied out together,
    interleaved into buffers that pack 4 frames per pixel, channels last (Y of frame t at
    y[t // 4, :, :, t % 4], U at c[t // 4, ..., t % 4], V at c[Q + t // 4, ..., t % 4], Q = ceil(T / 4)):
    one kernels.pack4 call per plane and group once its 4 frames are in (the frames are kept until then; a
    group left incomplete, at the clip's end or by a looped clip's repeats, is copied a frame at a time).
    copy(src, dst): frame dst shows frame src's picture (a looped clip), filled from it after the last put.
    Then either resize(out): out (3, T, S, S) uint8 Y, U, V resized (steps 1-2: five kernel calls, Y: resize;
    U, V: _chroma_steps) and flipped (step 3); or to_rgb(out, matrix): out (3, T, S, S) float32, the same
    resized planes flipped, converted and normalised (steps 3-5) by kernels.packed_to_rgb in one pass.
    box (x0, y0, side) in a width x height frame.
    """

    def __init__(self, box: Sequence[int], flip: bool, frames: int, size: int, width: int, height: int):
        self.x0, self.y0, self.side = (int(v) for v in box)
        self.cx0, self.cy0, self.cw, self.ch, self.ox, self.oy = chroma_region(box, width, height)
        self.flip, self.frames, self.size = bool(flip), frames, size
        s, self.groups = self.side, -(-frames // 4)
        self.y = np.empty((self.groups, s, s, 4), np.uint8)
        self.c = np.empty((2 * self.groups, self.ch, self.cw, 4), np.uint8)
        self._group, self._pending = -1, {}  # the group being collected: {t % 4: (Y, U, V) 2-D plane arrays}
        self._copies: list[tuple[int, int]] = []

    def put(self, t: int, planes: Sequence) -> None:
        """Frame t of the clip: its Y, U, V planes (rows of line_size bytes), read in place (kept until its
        group of 4 is copied out)."""
        if t // 4 != self._group:
            self._flush()
            self._group = t // 4
        self._pending[t % 4] = tuple(np.frombuffer(p, np.uint8).reshape(-1, p.line_size) for p in planes)
        if len(self._pending) == 4:
            self._flush()

    def copy(self, src: int, dst: int) -> None:
        """Frame dst shows the same picture as frame src (a looped clip): filled from src after the last put."""
        self._copies.append((src, dst))

    def _flush(self) -> None:
        """Copy the pending frames' regions into their group: one pack4 per plane for a full group."""
        from pipeline import kernels

        q, pending, self._pending = self._group, self._pending, {}
        if not pending:
            return
        regions = ((self.y[q], self.y0, self.x0), (self.c[q], self.cy0, self.cx0),
                   (self.c[self.groups + q], self.cy0, self.cx0))
        for plane, (dst, top, left) in enumerate(regions):
            if len(pending) == 4:
                kernels.pack4(*(pending[k][plane] for k in range(4)), top, left, dst.view(np.uint32)[..., 0])
                continue
            h, w = dst.shape[:2]
            for k, planes in pending.items():
                dst[..., k] = planes[plane][top:top + h, left:left + w]

    def _resized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-2 for the whole clip: (Q, 4, S, S) Y and (2Q, 4, S, S) U, V, uint8, channels last."""
        self._flush()
        for src, dst in self._copies:
            for buf, q0 in ((self.y, 0), (self.c, 0), (self.c, self.groups)):
                buf[q0 + dst // 4, ..., dst % 4] = buf[q0 + src // 4, ..., src % 4]
        s, side = self.size, self.side
        y = _interpolate(torch.from_numpy(self.y).permute(0, 3, 1, 2), s)
        c = _chroma_steps(torch.from_numpy(self.c).permute(0, 3, 1, 2), self.ox, self.oy, side, s)
        return y, c

    def resize(self, out: np.ndarray) -> None:
        """out (3, T, S, S) uint8: the clip's Y, U, V cropped and resized (steps 1-2) and flipped (step 3)."""
        y, c = (v.numpy() for v in self._resized())
        _unpack(y, out[0], self.flip)
        _unpack(c[:self.groups], out[1], self.flip)
        _unpack(c[self.groups:], out[2], self.flip)

    def to_rgb(self, out: np.ndarray, matrix: np.ndarray) -> None:
        """out (3, T, S, S) float32: steps 1-5, with matrix (3, 6) = augment.conversion's A | b | lo | hi."""
        from pipeline import kernels

        y, c = (v.permute(0, 2, 3, 1).contiguous().numpy().view(np.uint32)[..., 0] for v in self._resized())
        kernels.packed_to_rgb(y, c, self.flip, matrix, out)


# ---- steps 4-5: colour and normalisation -------------------------------------------------------------------------


def conversion(norm: Normalisation, yuv: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Steps 4-5 as one affine map and a clamp: out = clamp(A @ p + b, lo, hi) per pixel p (3 values).

    yuv: p is (Y, U, V) (A = the BT.601 matrix with the normalisation folded in); else p is RGB (A diagonal).
    Returns A (3, 3), b (3,), lo (3,), hi (3,) float64: lo/hi are 0 and 255 normalised, so the clamp is
    clamp-to-[0, 255] before normalising (the scale 1/std is positive)."""
    mean, std = (np.array(v, np.float64) for v in norm.on_pixels())
    a = np.array(YUV_TO_RGB) if yuv else np.eye(3)
    off = -(a @ np.array(YUV_OFFSET)) if yuv else np.zeros(3)
    return a / std[:, None], (off - mean) / std, (0 - mean) / std, (255 - mean) / std


def conversion_tensors(norm: Normalisation, is_yuv: bool = True,
                       device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, list, list]:
    """conversion() as convert_clip takes it: A (3, 3), b (3,) float32 tensors on `device`; lo, hi as floats."""
    a, b, lo, hi = conversion(norm, is_yuv)
    return (torch.tensor(a, dtype=torch.float32, device=device), torch.tensor(b, dtype=torch.float32, device=device),
            lo.tolist(), hi.tolist())


def convert_clip(x: torch.Tensor, out: torch.Tensor, coeffs: tuple[torch.Tensor, torch.Tensor, list, list]) -> None:
    """Steps 4-5 for one clip: x (3, P) Y, U, V (or R, G, B) uint8 or float -> out (3, P) float32, with
    conversion_tensors' coeffs: one (3, 3) x (3, P) product plus offset, then a clamp per channel (to Python
    floats: ~3x faster on the CPU than a clamp to broadcast tensors; measured per 112 px clip of 16 frames,
    0.55 ms in all against 0.85 for numpy's einsum, add and clip)."""
    a, b, lo, hi = coeffs
    torch.addmm(b.view(3, 1), a, x if x.dtype == torch.float32 else x.float(), out=out)
    for c in range(3):
        out[c].clamp_(lo[c], hi[c])


def yuv_to_rgb(yuv: torch.Tensor, norm: Normalisation, out: torch.Tensor | None = None,
               is_yuv: bool = True) -> torch.Tensor:
    """Steps 4-5 for resized clips: (N, 3, T, S, S) Y, U, V (uint8, or float holding 0..255) -> (N, 3, T, S, S)
    float32 normalised RGB (into `out` when given). is_yuv=False: the input is already RGB (normalise only)."""
    coeffs = conversion_tensors(norm, is_yuv, yuv.device)
    if out is None:
        out = torch.empty(yuv.shape, dtype=torch.float32, device=yuv.device)
    for i in range(yuv.shape[0]):  # one clip at a time: no (N, 3, P) temporaries
        convert_clip(yuv[i].reshape(3, -1), out[i].view(3, -1), coeffs)
    return out


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


def _crops(plane: torch.Tensor, idx: np.ndarray, x0: np.ndarray, y0: np.ndarray, w: int, h: int) -> torch.Tensor:
    """Step 1 for clips idx of one plane (N, T, Hp, Wp) (any strides, e.g. NV12's U or V columns), regions
    [x0, x0 + w) x [y0, y0 + h) per clip: (n, T, h, w), one copy (a slice per clip)."""
    return torch.stack([plane[i, :, b:b + h, a:a + w] for i, a, b in zip(idx.tolist(), x0.tolist(), y0.tolist(),
                                                                          strict=True)])


def _grouped(keys: np.ndarray, planes_fn: Callable, n: int, t: int, flips: np.ndarray, size: int,
             norm: Normalisation, device: torch.device, is_yuv: bool) -> torch.Tensor:
    """Run planes_fn(clips (n_g,) int64 host array, key) -> (n_g, 3, T, S, S) uint8 resized planes over the clips
    in groups of equal key (key[0]: the crop side) and chunks, then flip (step 3) and yuv_to_rgb (steps 4-5);
    returns (N, 3, T, S, S) float32."""
    out = torch.empty((n, 3, t, size, size), dtype=torch.float32, device=device)
    for key in np.unique(keys, axis=0):
        group = np.flatnonzero((keys == key).all(axis=1))
        step = chunk_clips(t, int(key[0]), CHUNK_BYTES.get(device.type, CHUNK_BYTES["cpu"]))
        for a in range(0, len(group), step):
            idx = group[a:a + step]
            x = planes_fn(idx, key)  # (n_g, 3, T, S, S) uint8
            flip = torch.from_numpy(flips[idx]).to(device, non_blocking=True).view(-1, 1, 1, 1, 1)
            idx_t = torch.from_numpy(idx).to(device, non_blocking=True)
            out[idx_t] = yuv_to_rgb(torch.where(flip, x.flip(-1), x), norm, is_yuv=is_yuv)
    return out


def augment_nv12(y: torch.Tensor, uv: torch.Tensor, sizes, boxes, flips, size: int,
                 norm: Normalisation) -> torch.Tensor:
    """NV12 decoder output -> clips: the specification (module docstring), batched in torch on y's device.

    y: (N, T, Hp, Wp) uint8; uv: (N, T, Hp/2, Wp) uint8 (U, V interleaved). Host arrays (the plan's; read
    without a device synchronisation): sizes (N, 2) (H_n, W_n) of each clip's frames, in the top-left of its
    planes, even; boxes (N, 3) (x0, y0, side) in pixels; flips (N,) bool; norm: the Normalisation. Returns
    (N, 3, T, size, size) float32 on y's device.
    """
    n, t = y.shape[:2]
    sizes, boxes, flips = _host_params(sizes, boxes, flips, n)
    u, v = uv[..., 0::2], uv[..., 1::2]  # (N, T, Hp/2, Wp/2) strided views
    regions = np.array([chroma_region(b, w, h) for b, (h, w) in zip(boxes, sizes, strict=True)],
                       np.int64).reshape(n, 6)  # cx0, cy0, cw, ch, ox, oy
    keys = np.column_stack([boxes[:, 2], regions[:, 2:]])  # equal crop geometry: one kernel call per plane

    def planes(idx: np.ndarray, key: np.ndarray) -> torch.Tensor:
        side, cw, ch, ox, oy = key.tolist()
        m = len(idx)
        ys = resize_crops(_crops(y, idx, boxes[idx, 0], boxes[idx, 1], side, side), size)  # (m, T, S, S)
        cx, cy = regions[idx, 0], regions[idx, 1]
        uvs = torch.cat([_crops(u, idx, cx, cy, cw, ch), _crops(v, idx, cx, cy, cw, ch)], 1)  # (m, 2T, ch, cw)
        uvs = resize_chroma(uvs, ox, oy, side, size)
        return torch.cat([ys.view(m, 1, t, size, size), uvs.view(m, 2, t, size, size)], 1)

    return _grouped(keys, planes, n, t, flips, size, norm, y.device, is_yuv=True)


def augment_rgb(rgb: torch.Tensor, sizes, boxes, flips, size: int,
                norm: Normalisation) -> torch.Tensor:
    """RGB frames -> clips: steps 1-2 (R, G, B as luma-resolution planes), 3 and 5 of the specification,
    batched in torch.

    rgb: (N, T, Hp, Wp, 3) uint8. Host arrays: sizes (N, 2) (H_n, W_n) of each clip's frames (top-left of
    its planes); boxes (N, 3) (x0, y0, side); flips (N,) bool; norm as augment_nv12's. Returns
    (N, 3, T, size, size) float32 on rgb's device.
    """
    n, t = rgb.shape[:2]
    sizes, boxes, flips = _host_params(sizes, boxes, flips, n)

    def planes(idx: np.ndarray, key: np.ndarray) -> torch.Tensor:
        side, m = int(key[0]), len(idx)
        x = _crops(rgb, idx, boxes[idx, 0], boxes[idx, 1], side, side)  # (m, T, side, side, 3)
        x = resize_crops(x.view(m * t, side, side, 3).permute(0, 3, 1, 2), size)  # channels last: as it lies
        return x.reshape(m, t, 3, size, size).transpose(1, 2)

    return _grouped(boxes[:, 2:], planes, n, t, flips, size, norm, rgb.device, is_yuv=False)


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
