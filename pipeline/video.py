"""A source video's frames as prepare_data.py stores them and infer.py reads them: the geometry and timing both
follow, written once.

    with open_source(path) as (container, stream):
        rate, note = pick_rate(stream)                # the output's constant rate
        for frame, count in (retimer := Retimer(container, stream, rate)):
            geometry = geometry or Geometry.of(frame, stream.sample_aspect_ratio, height)
            out = geometry.apply(frame, scaler)       # upright, `height` px high, yuv420p
            ...                                       # shown as the next `count` output frames (0: dropped)

Geometry: the source's display matrix (phones store portrait video as landscape pixels plus "rotate 90") is
applied to the pixels, so the output is upright and its height is the display height; flips too. The width keeps
the display aspect ratio (pixel aspect ratio included), rounded to even.

Time: the output has a constant rate, the source's nominal rate (`pick_rate`), and keeps the source's duration.
Output frame k shows the source frame on screen at time k / fps after the first frame, whatever the source's
timing (variable rate, dropped-frame slots in AVI, frames lost to decode errors): frames are duplicated or
dropped as needed (`frame_slot`, `Retimer`). Frame times (`Clock`): pts; else the packet's dts (as FFmpeg's
best-effort timestamp does); else, or when a time does not increase or jumps ahead by more than MAX_GAP_S, the
previous time plus one output frame period (counted as guessed: a raw .h264 stream has no timestamps at all).

NV12 (`to_nv12`): a yuv420p frame as one (H*3/2, W) uint8 array, the luma rows then the chroma rows with U and V
interleaved, the layout NVDEC decodes to and pipeline/augment.py's augment_nv12 reads.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import ColorRange, VideoReformatter

FALLBACK_FPS = Fraction(30)
MAX_DECODE_ERRORS = 50  # a source with this many decode errors and no frame yet is given up on
# A timestamp this late still counts as on time, in output frame periods. Timestamps are rounded to the
# container's tick (Matroska: 1 ms, so a 30 fps frame due at 66.67 ms says 67 ms); a quarter period absorbs
# that and never moves a frame by more than a quarter of a frame.
SLACK = Fraction(1, 4)
MAX_GAP_S = 60  # a forward jump in presentation time longer than this is a broken timestamp, not a pause


class Rejected(Exception):
    """The source cannot give a usable video. str(exc) is the reason (prepare_data.py writes it to rejected.csv,
    infer.py prints it)."""


def ffmpeg_message(e: Exception) -> str:
    """The words of an FFmpeg (or OS) error, without PyAV's wrapping."""
    return getattr(e, "strerror", None) or str(e)


def check_readable(src: Path) -> int:
    """Return the size in bytes of a source that may be worth opening; raise Rejected otherwise."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise Rejected("missing: file not found") from None
    except OSError as e:
        raise Rejected(f"unreadable: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise Rejected("not a video: not a regular file")
    if st.st_size == 0:
        raise Rejected("empty file (0 bytes)")
    # Root may read a file nobody is allowed to read; treat it as unreadable for every user alike.
    if st.st_mode & 0o444 == 0 or not os.access(src, os.R_OK):
        raise Rejected("unreadable: permission denied")
    return st.st_size


@contextlib.contextmanager
def open_source(path: str | Path, decode_threads: int = 0, format: str | None = None,
                options: dict[str, str] | None = None) -> Iterator[tuple[av.container.InputContainer,
                                                                         av.video.stream.VideoStream]]:
    """(container, its first video stream), ready to decode with frame threads (decode_threads of them; 0: FFmpeg
    picks); Rejected when it cannot be opened or has no decodable video stream. Closed on leaving.

    format, options: FFmpeg's demuxer and its options, for a source FFmpeg cannot guess from the path (a folder of
    JPEG frames read by image2: prepare/frames.py)."""
    try:
        container = av.open(str(path), format=format, options=options, metadata_errors="ignore")
    except PermissionError as e:
        raise Rejected(f"unreadable: {e.strerror}") from None
    except (av.FFmpegError, OSError) as e:
        raise Rejected(f"not a video: ffmpeg cannot open it ({ffmpeg_message(e)})") from None
    with container:
        if not container.streams.video:
            raise Rejected("no video stream")
        vs = container.streams.video[0]
        if vs.codec_context is None:
            raise Rejected(f"undecodable: no decoder for codec '{vs.codec_tag or 'unknown'}'")
        vs.thread_type = "AUTO"  # frame threads decode the next frames while the caller works on this one
        if decode_threads:
            vs.codec_context.thread_count = decode_threads
        yield container, vs


def pick_rate(stream: av.video.stream.VideoStream) -> tuple[Fraction, str]:
    """The output rate: the source's nominal frame rate as a small fraction; 30 fps with a note when unknown.

    ffmpeg's guess first (av_guess_frame_rate, what its command line uses for constant-rate output: the rate
    its timestamps step at, from the first frames or the Matroska track's default duration), then the average
    rate. They agree for constant-rate sources. They differ where frames are missing or the rate varies: an MP4
    at 25 fps with a 0.4 s hole in 1.4 s has an average of 17.6 fps, and sampling it at that rate would drop
    frames from its 25 fps parts. The output keeps the source's duration at any rate (see frame_slot).
    """
    for rate in (stream.guessed_rate, stream.average_rate, stream.base_rate):
        if rate and 1 <= float(rate) <= 240:
            return Fraction(rate).limit_denominator(1001), ""
    return FALLBACK_FPS, f"frame rate unknown or implausible ({stream.average_rate}): used {FALLBACK_FPS} fps"


def display_size(width: int, height: int, sar: Fraction | None, transpose: bool = False) -> tuple[float, float]:
    """The size a player shows: width, height (the coded size) with the pixel aspect ratio sar applied, turned
    by 90 degrees when transpose (the display matrix says so)."""
    display_w = width * (sar if sar and sar > 0 else 1)
    return (height, display_w) if transpose else (display_w, height)


def output_size(width: int, height: int, sar: Fraction | None, out_height: int,
                transpose: bool = False) -> tuple[int, int]:
    """(width, height) for out_height with the display aspect ratio kept and the width rounded to even.

    width, height: the coded size; sar: pixel aspect ratio; transpose: the display turns the frame by 90 degrees.
    """
    display_w, display_h = display_size(width, height, sar, transpose)
    return max(2, round(display_w * out_height / display_h / 2) * 2), out_height


def frame_slot(t: Fraction, rate: Fraction) -> int:
    """The first output frame that shows a source frame displayed from t seconds after the first frame.

    Output frame k (at k / rate) shows the latest source frame whose time is before (k + SLACK) / rate, so
    frame_slot(t) = floor(t * rate - SLACK) + 1; a source frame whose slot equals the next one's is dropped, one
    whose slot is several below the next one's fills several output frames. The output has
    max(1, frame_slot(duration)) frames: for a constant-rate source with exact timestamps, frame i -> frame i.
    """
    return math.floor(t * rate - SLACK) + 1


class Clock:
    """Times (seconds after the first frame) of decoded frames, which come in presentation order.

    A frame's time is its pts, else the packet's dts (what FFmpeg's best-effort timestamp falls back to). When
    it has neither, or its time does not increase (broken or wrapped timestamps) or jumps ahead by more than
    MAX_GAP_S, it is timed one output frame period after the previous frame and counted in `guessed`.
    """

    def __init__(self, time_base: Fraction, rate: Fraction):
        self.time_base, self.period = time_base, 1 / rate
        self.origin: Fraction | None = None  # the first frame's timestamp (seconds)
        self.last: Fraction | None = None  # the latest frame's time
        self.guessed = 0

    def __call__(self, pts: int | None, dts: int | None = None) -> Fraction:
        ts = pts if pts is not None else dts
        if self.last is None:
            self.origin, self.last = (Fraction(0) if ts is None else ts * self.time_base), Fraction(0)
            self.guessed += ts is None
            return self.last
        t = None if ts is None else ts * self.time_base - self.origin
        if t is None or not self.last < t <= self.last + MAX_GAP_S:
            t = self.last + self.period
            self.guessed += 1
        self.last = t
        return t

    def end(self, duration: int | None) -> Fraction:
        """When the latest frame stops showing: after its duration (time-base units) if plausible, else a period."""
        d = (duration or 0) * self.time_base
        return self.last + (d if 0 < d <= MAX_GAP_S else self.period)


# Display transforms as (transpose, flip left-right, flip up-down), applied in that order to (H, W) planes.
ORIENTATIONS = {
    (False, False, False): "",
    (True, True, False): "rotated 90° clockwise",
    (False, True, True): "rotated 180°",
    (True, False, True): "rotated 90° counter-clockwise",
    (False, True, False): "flipped horizontally",
    (False, False, True): "flipped vertically",
    (True, False, False): "rotated 90° clockwise and flipped horizontally",
    (True, True, True): "rotated 90° counter-clockwise and flipped horizontally",
}


def display_transform(matrix: np.ndarray | None) -> tuple[tuple[bool, bool, bool], str]:
    """The (transpose, flip_lr, flip_ud) that shows pixels as FFmpeg's display matrix says, and its description.

    matrix: 9 int32 (AV_FRAME_DATA_DISPLAYMATRIX, 16.16 fixed point, row vectors [x y 1] * M, y down), or None.
    Only the eight axis-aligned transforms are applied; another angle is ignored, and the description says so.
    """
    if matrix is None:
        return (False, False, False), ""
    a, b, c, d = (np.asarray(matrix, np.float64)[[0, 1, 3, 4]] / 65536).tolist()
    if abs(b) < 1e-3 and abs(c) < 1e-3 and abs(a) > 1e-3 and abs(d) > 1e-3:  # x' = a x, y' = d y
        key = (False, a < 0, d < 0)
    elif abs(a) < 1e-3 and abs(d) < 1e-3 and abs(b) > 1e-3 and abs(c) > 1e-3:  # x' = c y, y' = b x
        key = (True, c < 0, b < 0)
    else:
        angle = math.degrees(math.atan2(b, a))
        return (False, False, False), f"not applied: the display matrix turns by {angle:.0f}° (only 90° steps are)"
    return key, ORIENTATIONS[key]


def display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    """The frame's display matrix (9 int32), or None. FFmpeg attaches the container's (MP4 tkhd) to each frame."""
    sd = frame.side_data.get(SideDataType.DISPLAYMATRIX)
    return None if sd is None else np.frombuffer(bytes(sd), np.int32)


def orient(frame: av.VideoFrame, transform: tuple[bool, bool, bool]) -> av.VideoFrame:
    """A yuv420p frame with the display transform applied to each plane (an even-sized frame stays valid)."""
    if not any(transform):
        return frame
    transpose, flip_lr, flip_ud = transform
    w, h = (frame.height, frame.width) if transpose else (frame.width, frame.height)
    out = av.VideoFrame(w, h, "yuv420p")
    for src, dst in zip(frame.planes, out.planes, strict=True):
        a = np.frombuffer(src, np.uint8).reshape(src.height, src.line_size)[:, : src.width]
        a = a.T if transpose else a
        a = a[:, ::-1] if flip_lr else a
        a = a[::-1] if flip_ud else a
        np.asarray(memoryview(dst)).reshape(dst.height, dst.line_size)[:, : dst.width] = a
    out.pts, out.time_base = frame.pts, frame.time_base
    return out


class Retimer:
    """The decoded frames of `stream`, retimed to a constant `rate` (module docstring). Iterate for
    (frame, count): each source frame in order, shown as the next `count` output frames (0: dropped), given once
    the next frame's time (or the end) is known. A packet that fails to decode costs its frame, not the video.

    After iterating: n (output frames), decoded (source frames), shown (source frames given a count > 0), errors
    (packets that failed to decode) and first_error, guessed (frames timed by counting), end (seconds from the first
    frame to the end of the last; None until the last frame is given: `end is not None` marks the last one).
    Rejected when the stream gives no frame."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream, rate: Fraction):
        self.container, self.stream, self.rate = container, stream, rate
        self.clock = Clock(stream.time_base, rate)
        self.n = self.decoded = self.shown = self.errors = 0
        self.first_error = ""
        self.end: Fraction | None = None

    @property
    def guessed(self) -> int:
        return self.clock.guessed

    def _give(self, frame: av.VideoFrame, until: int) -> tuple[av.VideoFrame, int]:
        """(frame, the output frames it fills: up to output frame `until`)."""
        count = until - self.n
        if count > 0:
            self.n, self.shown = until, self.shown + 1
        return frame, count

    def _error(self, e: Exception) -> None:
        self.errors += 1
        self.first_error = self.first_error or ffmpeg_message(e)

    def __iter__(self) -> Iterator[tuple[av.VideoFrame, int]]:
        held = None  # the latest source frame: shown from output frame n on, until the next frame's slot
        try:
            for packet in self.container.demux(self.stream):
                try:
                    frames = packet.decode()
                except (av.FFmpegError, ValueError) as e:  # a corrupt packet costs its frame, not the video
                    self._error(e)
                    if self.decoded == 0 and self.errors >= MAX_DECODE_ERRORS:
                        break
                    continue
                for frame in frames:
                    slot = frame_slot(self.clock(frame.pts, frame.dts), self.rate)
                    if held is not None:
                        yield self._give(held, slot)
                    held, self.decoded = frame, self.decoded + 1
        except av.FFmpegError as e:  # the demuxer gave up (truncated file): keep what decoded, if anything
            self._error(e)
        if held is None:
            if self.errors:
                raise Rejected(f"undecodable: 0 frames decoded, {self.errors} decode errors (first: "
                               f"{self.first_error})")
            raise Rejected("no frames: the video stream has no decodable frames")
        self.end = self.clock.end(held.duration)
        yield self._give(held, max(1, frame_slot(self.end, self.rate)))


@dataclass(frozen=True)
class Geometry:
    """How a source's frames become output frames: scaled to `scaled` (width, height), then turned by `transform`
    (display_transform) into width x height. source_size: the source's display size (after its pixel aspect ratio
    and rotation); orientation: the transform in words ("" when none)."""

    transform: tuple[bool, bool, bool]
    orientation: str
    width: int
    height: int
    source_size: tuple[float, float]

    @classmethod
    def of(cls, first: av.VideoFrame, sar: Fraction | None, height: int) -> Geometry:
        """The geometry of a source whose first frame is `first` (its display matrix, coded size), pixel aspect
        ratio `sar`, for outputs `height` px high."""
        transform, orientation = display_transform(display_matrix(first))
        width, _ = output_size(first.width, first.height, sar, height, transform[0])
        return cls(transform, orientation, width, height, display_size(first.width, first.height, sar, transform[0]))

    @property
    def scaled(self) -> tuple[int, int]:
        """(width, height) the source frame is scaled to before it is turned."""
        return (self.height, self.width) if self.transform[0] else (self.width, self.height)

    def apply(self, frame: av.VideoFrame, scaler: VideoReformatter, threads: int | None = None) -> av.VideoFrame:
        """frame, scaled (bicubic, yuv420p in the limited range; one VideoReformatter per video: PyAV keeps a scaler
        per source frame otherwise) and turned upright: width x height."""
        w, h = self.scaled
        # Full-range pixels (JPEG frames, MJPEG, some phones' H.264) are brought to the limited range the output
        # is read in; without the two ranges swscale copied them as they were, and the output's blacks and whites
        # came out clipped. A source without a range is limited (swscale's and players' reading).
        f = scaler.reformat(frame, width=w, height=h, format="yuv420p", interpolation="BICUBIC", threads=threads,
                            src_color_range=frame.color_range, dst_color_range=ColorRange.MPEG)
        return orient(f, self.transform)


def to_nv12(frame: av.VideoFrame, out: np.ndarray | None = None) -> np.ndarray:
    """A yuv420p (or yuvj420p) frame as (H*3/2, W) uint8 NV12: rows 0..H-1 the Y plane, rows H.. the U and V
    planes interleaved (U at even columns), into `out` when given."""
    y, u, v = (np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, :p.width] for p in frame.planes)
    h, w = y.shape
    out = np.empty((h * 3 // 2, w), np.uint8) if out is None else out
    out[:h] = y
    out[h:, 0::2], out[h:, 1::2] = u, v
    return out
