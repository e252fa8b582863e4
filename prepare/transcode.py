"""Transcode one video with PyAV: decode -> retime -> resize -> orient -> encode (short closed GOP, CFR).

The output is what the loaders rely on (design.md 3-4): video stream only, yuv420p, height `EncodeSettings.height`
with the display aspect ratio kept and an even width, a keyframe at exactly every `gop`-th frame (0, gop, ...),
no reordering (no B-frames, closed GOPs), atomic write (temp name, then rename).

Frame count: `num_frames` is the number of packets the encoder gave and the muxer wrote, checked equal to the
frames sent to the encoder. That is the number of frames a decoder shows because every codec offered writes one
shown frame per packet: VP9 with lag-in-frames 0 has no hidden (alt-ref) frames, x264/x265 without B-frames
emit one access unit per frame, and none of them drops frames in constant-quality mode. tests/test_prepare.py
decodes outputs of every codec (plain, retimed, rotated) to check it; `EncodeSettings.verify` (--verify) also
decodes every new output and compares its frame count and size (~10% more time).

Geometry: the source's display matrix (phones store portrait video as landscape pixels plus "rotate 90") is
applied to the pixels, so the output is upright and its height is the display height; flips too.

Time: the output has a constant rate, the source's nominal rate (`pick_rate`), and keeps the source's duration.
Output frame k shows the source frame on screen at time k / fps after the first frame, whatever the source's
timing (variable rate, dropped-frame slots in AVI, frames lost to decode errors): frames are duplicated or
dropped as needed (`frame_slot`), and counted. Frame times (`Clock`): pts; else the packet's dts (as FFmpeg's
best-effort timestamp does); else, or when a time does not increase or jumps ahead by more than MAX_GAP_S, the
previous time plus one output frame period (counted as guessed: a raw .h264 stream has no timestamps at all).
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType
from av.video.reformatter import VideoReformatter

from pipeline.atomic import atomic_write

# codec: (encoder, container, extension). HEVC in MP4 tagged hvc1 (parameter sets in the header only), the
# standard tag, read by PyAV/FFmpeg and by DALI's GPU decoder (which turns it into Annex B for NVDEC).
CODECS = {"vp9": ("libvpx-vp9", "webm", ".webm"), "h264": ("libx264", "mp4", ".mp4"),
          "hevc": ("libx265", "mp4", ".mp4")}
# Quality (constant-quality mode). VP9: Google's VOD guide suggests crf 36 at 360p for two-pass "good" encoding;
# realtime mode (cpu-used 8) and a keyframe every 16 frames lose quality at a given crf, so we go 4 steps finer.
# H.264 and HEVC: x264's and x265's own defaults. All are overridable with --crf.
DEFAULT_CRF = {"vp9": 32, "h264": 23, "hevc": 28}
MAX_CRF = {"vp9": 63, "h264": 51, "hevc": 51}
FALLBACK_FPS = Fraction(30)
MAX_DECODE_ERRORS = 50  # a source with this many decode errors and no frame yet is given up on
# Bump when a change here changes the outputs or VideoInfo's fields: records of another revision are redone.
REVISION = 2  # 2: retimed by presentation time, display matrix applied, structured notes
# A timestamp this late still counts as on time, in output frame periods. Timestamps are rounded to the
# container's tick (Matroska: 1 ms, so a 30 fps frame due at 66.67 ms says 67 ms); a quarter period absorbs
# that and never moves a frame by more than a quarter of a frame.
SLACK = Fraction(1, 4)
MAX_GAP_S = 60  # a forward jump in presentation time longer than this is a broken timestamp, not a pause
# Smallest frame NVDEC (the GPU decoder DALI uses) decodes: VP9 128x128 (seen on an H100, design.md 4); H.264
# 48x16 and HEVC 144x144 (NVIDIA's NVDEC application note, not measured here; design.md 4 says 128x128 for
# HEVC too: the larger is kept until measured). Smaller outputs are noted in the report.
GPU_MIN_SIZE = {"vp9": (128, 128), "h264": (48, 16), "hevc": (144, 144)}
# x265 4.2 (PyAV 18.1's wheel) corrupts the heap when the frame is 34 to 48 px wide (measured: glibc aborts with
# "free(): invalid next size", any height; 16-32 and 50-200 px were fine). Such outputs are rejected rather than
# risk a crashed worker or a bad file; NVDEC needs HEVC at least 144 px wide anyway.
HEVC_MIN_WIDTH = 64


class Rejected(Exception):
    """The source cannot give a usable video. str(exc) is the reason written to rejected.csv."""


@dataclass(frozen=True)
class EncodeSettings:
    """How every output is encoded. Part of each output's record: a change means the output is redone."""

    codec: str = "vp9"  # vp9 (WebM) | h264 | hevc (MP4, for GPU-only users: DALI's CPU decoder reads neither)
    height: int = 360  # output height in pixels (even); width follows the display aspect ratio, rounded to even
    gop: int = 16  # a keyframe at exactly every gop-th frame, no B-frames, closed GOP
    crf: int = 32  # constant-quality level (lower = better and bigger)
    threads: int = 1  # codec (and scaler) threads per worker process
    # Source decoder threads: decoding is exact, so they never change the bytes; prepare_data.py gives a worker
    # the cores no other worker uses (one worker on 2 cores: 1.2-1.3x faster, benchmarks/RESULTS.md, issue 12).
    decode_threads: int = 1
    verify: bool = False  # decode each new output again and compare its frame count and size (~10% slower)

    @property
    def extension(self) -> str:
        return CODECS[self.codec][2]

    def identity(self) -> dict:
        """The settings that decide what an output is, and the code's revision: a change means it is redone.

        threads, decode_threads and verify are left out. verify only checks; decode_threads never change the
        bytes (tested); threads do change the bytes (each codec splits its work by thread count) but not the
        output's frames, size or GOPs, so an output is reused across them. Byte-identical outputs across runs and
        processes are tested with one codec thread (tests/test_prepare.py).
        """
        d = asdict(self)
        for run_only in ("threads", "decode_threads", "verify"):
            d.pop(run_only)
        return {**d, "revision": REVISION}


@dataclass(frozen=True)
class VideoInfo:
    """What one transcode produced. fps is the output's constant rate; num_frames: packets written (see above).

    Stored as a dict in DST/.prepare records: rename or remove a field only together with a REVISION bump.
    """

    num_frames: int
    fps: float
    width: int
    height: int
    bytes_in: int
    bytes_out: int
    decode_errors: int = 0  # packets of the source that failed to decode (frames lost)
    source_frames: int = 0  # frames decoded from the source
    source_seconds: float = 0.0  # from the first frame's time to the end of the last one
    source_width: int = 0  # the source's display size (after its rotation and pixel aspect ratio)
    source_height: int = 0
    duplicated: int = 0  # output frames repeating the one before (slow or variable rate, gaps, lost frames)
    dropped: int = 0  # source frames not shown (two or more within one output frame period)
    guessed_times: int = 0  # frames timed by counting: no timestamp, or one that went back or jumped ahead
    orientation: str = ""  # the display matrix applied, e.g. "rotated 90° clockwise"; "" when none
    fps_note: str = ""  # set when the source's frame rate was unknown or implausible and FALLBACK_FPS was used


def video_notes(info: VideoInfo, codec: str) -> dict[str, str]:
    """What a user should know about one output, by kind (the report counts and lists them)."""
    out = {}
    if info.source_height and info.source_height < info.height:
        factor = f"{info.height / info.source_height:.2f}".rstrip("0").rstrip(".")
        out["upscaled"] = f"upscaled {info.source_height}->{info.height} px ({factor}x)"
    if info.source_frames == 1:
        held = f", held for {info.num_frames} frames" if info.num_frames > 1 else ""
        out["single_frame"] = f"1 source frame: the output is a still image{held}"
    min_w, min_h = GPU_MIN_SIZE[codec]
    if info.width < min_w or info.height < min_h:
        out["small"] = (f"{info.width}x{info.height} is below {min_w}x{min_h}, the smallest the GPU decoder "
                        f"(NVDEC) decodes: raise --height")
    if info.orientation:
        out["rotated"] = info.orientation
    if info.duplicated or info.dropped:
        out["retimed"] = (f"{info.source_frames} frames over {info.source_seconds:.2f} s -> {info.num_frames} at "
                          f"{info.fps:g} fps: {info.duplicated} duplicated, {info.dropped} dropped")
    if info.guessed_times:
        out["timestamps_guessed"] = (f"{info.guessed_times} frames without a usable timestamp: "
                                     f"timed as one output frame after the previous one")
    if info.fps_note:
        out["fps_unknown"] = info.fps_note
    return out


def encoder_options(s: EncodeSettings) -> dict[str, str]:
    """libvpx-vp9 / libx264 / libx265 options giving a keyframe at exactly every s.gop frames and no reordering."""
    gop = {"g": str(s.gop), "keyint_min": str(s.gop)}
    if s.codec == "vp9":
        # realtime + cpu-used 8 + row-mt: ~as fast as x264 veryfast (design.md 4). lag 0: no hidden alt-ref
        # frames, so packet i is frame i. keyint_min = g: libvpx places no extra (scene-cut) keyframes.
        return {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "lag-in-frames": "0",
                "crf": str(s.crf), "b:v": "0", **gop}
    if s.codec == "hevc":
        # x265 takes its GOP from x265-params: IDR every gop frames, no scene cuts, no B-frames, closed GOPs.
        # ultrafast: the encoder still takes ~3.5x VP9 realtime's time per frame, a whole transcode ~1.9x
        # (benchmarks/RESULTS.md). One frame thread: frame-parallel encoding can change the bytes; pools=none:
        # no thread pool at all for one thread. log-level error: x265 prints to stderr itself, not via FFmpeg.
        pools = "none" if s.threads == 1 else str(s.threads)
        params = (f"keyint={s.gop}:min-keyint={s.gop}:scenecut=0:bframes=0:open-gop=0:frame-threads=1:"
                  f"pools={pools}:log-level=error")
        return {"preset": "ultrafast", "crf": str(s.crf), "x265-params": params}
    # sc_threshold 0: no scene-cut keyframes; bf 0: no B-frames; x264 GOPs are closed by default.
    return {"preset": "veryfast", "crf": str(s.crf), "sc_threshold": "0", "bf": "0", **gop}


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


def count_frames(path: Path) -> tuple[int, int, int]:
    """Decode every frame of path's first video stream; return (num_frames, width, height)."""
    n, w, h = 0, 0, 0
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        for frame in c.decode(vs):
            n, w, h = n + 1, frame.width, frame.height
    return n, w, h


def keyframe_indices(path: Path) -> list[int]:
    """Frame indices of the keyframe packets (demux only; packet i is frame i for our outputs)."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size > 0]
    return [i for i, p in enumerate(packets) if p.is_keyframe]


def transcode(src: Path, dst: Path, s: EncodeSettings) -> VideoInfo:
    """Re-encode src to dst (written to a temp name in dst's folder, then renamed). Raise Rejected on bad input."""
    bytes_in = check_readable(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(dst) as tmp:  # a rejected, timed-out or failed encode leaves no file
            info = _encode(src, tmp, s, bytes_in)
            if s.verify:
                n, w, h = count_frames(tmp)
                if (n, w, h) != (info.num_frames, info.width, info.height):
                    raise Rejected(f"output check failed: wrote {info.num_frames} frames {info.width}x{info.height}, "
                                   f"decoded {n} frames {w}x{h}")
        return info
    except av.FFmpegError as e:
        raise Rejected(f"error: {_ffmpeg_message(e)}") from None


def _ffmpeg_message(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _encode(src: Path, tmp: Path, s: EncodeSettings, bytes_in: int) -> VideoInfo:
    try:
        inp = av.open(str(src), metadata_errors="ignore")
    except PermissionError as e:
        raise Rejected(f"unreadable: {e.strerror}") from None
    except (av.FFmpegError, OSError) as e:
        raise Rejected(f"not a video: ffmpeg cannot open it ({_ffmpeg_message(e)})") from None
    with inp, contextlib.ExitStack() as cleanup:
        if not inp.streams.video:
            raise Rejected("no video stream")
        vs = inp.streams.video[0]
        if vs.codec_context is None:
            raise Rejected(f"undecodable: no decoder for codec '{vs.codec_tag or 'unknown'}'")
        vs.thread_type = "AUTO"  # frame threads decode the next frames while this thread resizes and encodes
        vs.codec_context.thread_count = s.decode_threads
        rate, fps_note = pick_rate(vs)
        clock = Clock(vs.time_base, rate)
        out = None
        held = None  # the latest source frame: written from output frame n on, until the next frame's slot
        errors = decoded = 0
        first_error = ""
        try:
            for packet in inp.demux(vs):
                try:
                    frames = packet.decode()
                except (av.FFmpegError, ValueError) as e:  # a corrupt packet costs its frame, not the video
                    errors += 1
                    first_error = first_error or _ffmpeg_message(e)
                    if decoded == 0 and errors >= MAX_DECODE_ERRORS:
                        break
                    continue
                for frame in frames:
                    slot = frame_slot(clock(frame.pts, frame.dts), rate)
                    if out is None:  # opened at the first decoded frame: a source with none writes nothing
                        out = _Output(tmp, s, rate, frame, vs.sample_aspect_ratio)
                        cleanup.callback(out.abandon)  # on the way out: closes the file unless close() did
                    else:
                        out.write(held, slot - out.n)
                    held, decoded = frame, decoded + 1
        except av.FFmpegError as e:  # demuxer gave up (truncated file): keep what decoded, if anything
            errors += 1
            first_error = first_error or _ffmpeg_message(e)
        if out is None:
            if errors:
                raise Rejected(f"undecodable: 0 frames decoded, {errors} decode errors (first: {first_error})")
            raise Rejected("no frames: the video stream has no decodable frames")
        end = clock.end(held.duration)
        out.write(held, max(1, frame_slot(end, rate)) - out.n)
        out.close()
    return VideoInfo(num_frames=out.n, fps=round(float(rate), 6), width=out.width, height=out.height,
                     bytes_in=bytes_in, bytes_out=tmp.stat().st_size, decode_errors=errors, source_frames=decoded,
                     source_seconds=round(float(end), 6), source_width=round(out.source_size[0]),
                     source_height=round(out.source_size[1]), duplicated=out.n - out.shown,
                     dropped=decoded - out.shown, guessed_times=clock.guessed, orientation=out.orientation,
                     fps_note=fps_note)


class _Output:
    """The output file, set up from the first source frame (size, orientation); frames written in order.

    n counts the frames sent to the encoder, packets what it gave back (each muxed); close() checks they agree.
    """

    def __init__(self, tmp: Path, s: EncodeSettings, rate: Fraction, first: av.VideoFrame, sar: Fraction | None):
        self.transform, self.orientation = display_transform(display_matrix(first))
        transpose = self.transform[0]
        self.width, self.height = output_size(first.width, first.height, sar, s.height, transpose)
        if s.codec == "hevc" and self.width < HEVC_MIN_WIDTH:
            raise Rejected(f"too narrow for HEVC: {self.width}x{self.height} output (x265 corrupts memory below "
                           f"{HEVC_MIN_WIDTH} px wide; NVDEC needs {GPU_MIN_SIZE['hevc'][0]}): raise --height")
        self.source_size = display_size(first.width, first.height, sar, transpose)
        self.n = self.shown = self.packets = 0  # frames sent to the encoder; distinct source frames; packets muxed
        self.closed = False
        self.threads = s.threads
        # One scaler for the whole video. VideoFrame.reformat keeps its scaler on the source frame, so with new
        # frames from the decoder it set swscale up again for every frame (and, at PyAV's default threads=0, a
        # thread pool): 1.1 ms of CPU per 768x576 frame instead of 0.4 (benchmarks/RESULTS.md, issue 12).
        self.scaler = VideoReformatter()
        codec, fmt, _ = CODECS[s.codec]
        # bitexact: no random container UIDs or version strings, so the same input and settings give the same bytes.
        self.container = av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"})
        self.stream = self.container.add_stream(codec, rate=rate, options=encoder_options(s))
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.width, self.height, "yuv420p"
        self.stream.codec_context.time_base = Fraction(rate.denominator, rate.numerator)
        self.stream.codec_context.thread_count = s.threads
        if s.codec == "hevc":
            self.stream.codec_context.codec_tag = "hvc1"  # FFmpeg's MP4 default is hev1 (in-band parameter sets)

    def write(self, frame: av.VideoFrame, count: int) -> None:
        """Write frame as the next `count` output frames (0: the frame is dropped)."""
        if count <= 0:
            return
        w, h = (self.height, self.width) if self.transform[0] else (self.width, self.height)
        f = self.scaler.reformat(frame, width=w, height=h, format="yuv420p", interpolation="BICUBIC",
                                 threads=self.threads)
        f = orient(f, self.transform)
        f.pict_type = av.video.frame.PictureType.NONE  # the source's I-frames must not force keys
        for _ in range(count):
            f.pts, f.time_base = self.n, self.stream.codec_context.time_base
            self._mux(self.stream.encode(f))
            self.n += 1
        self.shown += 1

    def _mux(self, packets: list[av.Packet]) -> None:
        for p in packets:
            self.container.mux(p)
        self.packets += len(packets)

    def close(self) -> None:
        """Flush the encoder and finish the file; Rejected if a frame went missing (see the module docstring)."""
        self._mux(self.stream.encode())
        self.closed = True
        self.container.close()
        if self.packets != self.n:
            raise Rejected(f"output check failed: sent {self.n} frames to the encoder, it wrote {self.packets} "
                           "packets (each should be one shown frame)")

    def abandon(self) -> None:
        """Close the file if close() did not run (an exception on the way: a timeout, an encoder error). PyAV
        never closes an output container that has started, not even when it is garbage-collected: a worker
        would keep the descriptor of the deleted temp file, and the encoder's memory, until it exits."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):  # the exception on the way is the one to report
                self.container.close()
