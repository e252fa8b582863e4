"""Transcode one video with PyAV: decode -> resize -> encode (short closed GOP, CFR), atomic write, frame count.

The output is what the loaders rely on (design.md 3-4): video stream only, yuv420p, height `EncodeSettings.height`
with the aspect ratio kept and an even width, a keyframe at exactly every `gop`-th frame (0, gop, 2*gop, ...),
constant frame rate equal to the source's average rate, and `num_frames` counted by decoding the written file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av

CODECS = {"vp9": ("libvpx-vp9", "webm", ".webm"), "h264": ("libx264", "mp4", ".mp4")}
# Quality (constant-quality mode). VP9: Google's VOD guide suggests crf 36 at 360p for two-pass "good" encoding;
# realtime mode (cpu-used 8) and a keyframe every 16 frames lose quality at a given crf, so we go 4 steps finer.
# H.264: x264's own default. Both are overridable with --crf.
DEFAULT_CRF = {"vp9": 32, "h264": 23}
FALLBACK_FPS = Fraction(30)
MAX_DECODE_ERRORS = 50  # a source with this many decode errors and no frame yet is given up on


class Rejected(Exception):
    """The source cannot give a usable video. str(exc) is the reason written to rejected.csv."""


@dataclass(frozen=True)
class EncodeSettings:
    """How every output is encoded. Part of each output's record: a change means the output is redone."""

    codec: str = "vp9"  # vp9 (WebM) | h264 (MP4, for GPU-only users: DALI's CPU decoder cannot read it)
    height: int = 360  # output height in pixels (even); width follows the display aspect ratio, rounded to even
    gop: int = 16  # a keyframe at exactly every gop-th frame, no B-frames, closed GOP
    crf: int = 32  # constant-quality level (lower = better and bigger)
    threads: int = 1  # codec threads per worker process

    @property
    def extension(self) -> str:
        return CODECS[self.codec][2]

    def identity(self) -> dict:
        """The settings that change the output bytes (threads do not)."""
        d = asdict(self)
        d.pop("threads")
        return d


@dataclass(frozen=True)
class VideoInfo:
    """What one transcode produced. fps is the output's constant rate; num_frames counted by decoding it."""

    num_frames: int
    fps: float
    width: int
    height: int
    bytes_in: int
    bytes_out: int
    decode_errors: int = 0  # packets of the source that failed to decode (frames lost)
    note: str = ""  # e.g. the frame-rate fallback, shown in the report


def encoder_options(s: EncodeSettings) -> dict[str, str]:
    """libvpx-vp9 / libx264 options giving a keyframe at exactly every s.gop frames and no reordering."""
    gop = {"g": str(s.gop), "keyint_min": str(s.gop)}
    if s.codec == "vp9":
        # realtime + cpu-used 8 + row-mt: ~as fast as x264 veryfast (design.md 4). lag 0: no hidden alt-ref
        # frames, so packet i is frame i. keyint_min = g: libvpx places no extra (scene-cut) keyframes.
        return {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "lag-in-frames": "0",
                "crf": str(s.crf), "b:v": "0", **gop}
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
    """The source's average frame rate as a small fraction, or 30 fps with a note when unknown/implausible."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and 1 <= float(rate) <= 240:
            return Fraction(rate).limit_denominator(1001), ""
    return FALLBACK_FPS, f"frame rate unknown or implausible ({stream.average_rate}): used {FALLBACK_FPS} fps"


def output_size(width: int, height: int, sar: Fraction | None, out_height: int) -> tuple[int, int]:
    """(width, height) for out_height with the display aspect ratio kept and the width rounded to even."""
    display_w = width * (sar if sar and sar > 0 else 1)
    return max(2, round(display_w * out_height / height / 2) * 2), out_height


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
    tmp = dst.with_name(f".{dst.name}.partial-{os.getpid()}")
    try:
        info = _encode(src, tmp, s, bytes_in)
        n, w, h = count_frames(tmp)
        if (n, w, h) != (info.num_frames, info.width, info.height):
            raise Rejected(f"output check failed: wrote {info.num_frames} frames {info.width}x{info.height}, "
                           f"decoded {n} frames {w}x{h}")
        os.replace(tmp, dst)
        return info
    except av.FFmpegError as e:
        raise Rejected(f"error: {_ffmpeg_message(e)}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _ffmpeg_message(e: Exception) -> str:
    return getattr(e, "strerror", None) or str(e)


def _encode(src: Path, tmp: Path, s: EncodeSettings, bytes_in: int) -> VideoInfo:
    try:
        inp = av.open(str(src), metadata_errors="ignore")
    except PermissionError as e:
        raise Rejected(f"unreadable: {e.strerror}") from None
    except (av.FFmpegError, OSError) as e:
        raise Rejected(f"not a video: ffmpeg cannot open it ({_ffmpeg_message(e)})") from None
    with inp:
        if not inp.streams.video:
            raise Rejected("no video stream")
        vs = inp.streams.video[0]
        if vs.codec_context is None:
            raise Rejected(f"undecodable: no decoder for codec '{vs.codec_tag or 'unknown'}'")
        vs.thread_type = "AUTO"
        vs.codec_context.thread_count = s.threads
        rate, note = pick_rate(vs)
        out = stream = None
        n = errors = 0
        first_error = ""
        try:
            for packet in inp.demux(vs):
                try:
                    frames = packet.decode()
                except (av.FFmpegError, ValueError) as e:  # a corrupt packet costs its frame, not the video
                    errors += 1
                    first_error = first_error or _ffmpeg_message(e)
                    if n == 0 and errors >= MAX_DECODE_ERRORS:
                        break
                    continue
                for frame in frames:
                    if out is None:  # opened at the first decoded frame: a source with none writes nothing
                        w, h = output_size(frame.width, frame.height, vs.sample_aspect_ratio, s.height)
                        out, stream = _open_output(tmp, s, rate, w, h)
                    f = frame.reformat(width=w, height=h, format="yuv420p", interpolation="BICUBIC")
                    f.pts, f.time_base = n, stream.codec_context.time_base
                    f.pict_type = av.video.frame.PictureType.NONE  # the source's I-frames must not force keys
                    for p in stream.encode(f):
                        out.mux(p)
                    n += 1
        except av.FFmpegError as e:  # demuxer gave up (truncated file): keep what decoded, if anything
            errors += 1
            first_error = first_error or _ffmpeg_message(e)
        if out is None:
            if errors:
                raise Rejected(f"undecodable: 0 frames decoded, {errors} decode errors (first: {first_error})")
            raise Rejected("no frames: the video stream has no decodable frames")
        for p in stream.encode():
            out.mux(p)
        out.close()
    return VideoInfo(num_frames=n, fps=round(float(rate), 6), width=w, height=h, bytes_in=bytes_in,
                     bytes_out=tmp.stat().st_size, decode_errors=errors, note=note)


def _open_output(tmp: Path, s: EncodeSettings, rate: Fraction, w: int, h: int):
    codec, fmt, _ = CODECS[s.codec]
    # bitexact: no random container UIDs or version strings, so the same input and settings give the same bytes.
    out = av.open(str(tmp), "w", format=fmt, options={"fflags": "+bitexact"})
    stream = out.add_stream(codec, rate=rate, options=encoder_options(s))
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    stream.codec_context.time_base = Fraction(rate.denominator, rate.numerator)
    stream.codec_context.thread_count = s.threads
    return out, stream
