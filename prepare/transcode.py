"""Transcode one video with PyAV: decode -> retime -> resize -> orient -> encode (short closed GOP, CFR).

The output is what the loaders rely on (docs/design.md#prepared-dataset): video stream only, yuv420p, height
`EncodeSettings.height` with the display aspect ratio kept and an even width, a keyframe at exactly every `gop`-th
frame (0, gop, ...), no reordering (no B-frames, closed GOPs), atomic write (temp name, then rename). Geometry
(upright, the display aspect ratio) and time (a constant rate, the source's duration kept) follow
pipeline/video.py, which infer.py reads raw videos with too.

Frame count: `num_frames` is the number of packets the encoder gave and the muxer wrote, checked equal to the
frames sent to the encoder. That is the number of frames a decoder shows because every codec offered writes one
shown frame per packet: VP9 with lag-in-frames 0 has no hidden (alt-ref) frames, x264/x265 without B-frames
emit one access unit per frame, and none of them drops frames in constant-quality mode. tests/test_prepare.py
decodes outputs of every codec (plain, retimed, rotated) to check it; `EncodeSettings.verify` (--verify) also
decodes every new output and compares its frame count and size (~10% more time).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.video.reformatter import VideoReformatter

from pipeline.atomic import atomic_write
from pipeline.video import Geometry, Rejected, Retimer, check_readable, ffmpeg_message, open_source, pick_rate
from prepare import frames

# codec: (encoder, container, extension). HEVC in MP4 tagged hvc1 (parameter sets in the header only), the
# standard tag, read by PyAV/FFmpeg and by DALI's GPU decoder (which turns it into Annex B for NVDEC).
CODECS = {"vp9": ("libvpx-vp9", "webm", ".webm"), "h264": ("libx264", "mp4", ".mp4"),
          "hevc": ("libx265", "mp4", ".mp4")}
# Quality (constant-quality mode). VP9: Google's VOD guide suggests crf 36 at 360p for two-pass "good" encoding;
# realtime mode (cpu-used 8) and a keyframe every 16 frames lose quality at a given crf, so we go 4 steps finer.
# H.264 and HEVC: x264's and x265's own defaults. All are overridable with --crf.
DEFAULT_CRF = {"vp9": 32, "h264": 23, "hevc": 28}
MAX_CRF = {"vp9": 63, "h264": 51, "hevc": 51}
# Bump when a change here changes the outputs or VideoInfo's fields: records of another revision are redone.
REVISION = 3  # 2: retimed by presentation time, display matrix applied, structured notes; 3: full-range sources
# brought to the limited range (the outputs of limited-range sources are the same bytes as in 2)
# Smallest frame NVDEC (the GPU decoder DALI uses) decodes: VP9 128x128 (seen on an H100); H.264 48x16 and HEVC
# 144x144 (NVIDIA's NVDEC application note, not measured here; other sources say 128x128 for HEVC: the larger is
# kept until measured). docs/design.md#nvdec-facts. Smaller outputs are noted in the report.
GPU_MIN_SIZE = {"vp9": (128, 128), "h264": (48, 16), "hevc": (144, 144)}
# x265 4.2 (PyAV 18.1's wheel) corrupts the heap when the frame is 34 to 48 px wide (measured: glibc aborts with
# "free(): invalid next size", any height; 16-32 and 50-200 px were fine). Such outputs are rejected rather than
# risk a crashed worker or a bad file; NVDEC needs HEVC at least 144 px wide anyway.
HEVC_MIN_WIDTH = 64


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
        # realtime + cpu-used 8 + row-mt: ~as fast as x264 veryfast (docs/design.md#vp9-in-webm-by-default).
        # lag 0: no hidden alt-ref frames, so packet i is frame i. keyint_min = g: libvpx places no extra
        # (scene-cut) keyframes.
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


def transcode(src: Path, dst: Path, s: EncodeSettings, frame_rate: float | None = None) -> VideoInfo:
    """Re-encode src to dst (written to a temp name in dst's folder, then renamed). Raise Rejected on bad input.

    frame_rate: src is a folder of JPEG frames (frames.py), read as a video at this rate (frames per second).
    """
    bytes_in = check_readable(src) if frame_rate is None else frames.check_frames(src)[1]
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_write(dst) as tmp:  # a rejected, timed-out or failed encode leaves no file
            info = _encode(src, tmp, s, bytes_in, frame_rate)
            if s.verify:
                n, w, h = count_frames(tmp)
                if (n, w, h) != (info.num_frames, info.width, info.height):
                    raise Rejected(f"output check failed: wrote {info.num_frames} frames {info.width}x{info.height}, "
                                   f"decoded {n} frames {w}x{h}")
        return info
    except av.FFmpegError as e:
        raise Rejected(f"error: {ffmpeg_message(e)}") from None


def _encode(src: Path, tmp: Path, s: EncodeSettings, bytes_in: int, frame_rate: float | None = None) -> VideoInfo:
    source = (open_source(src, s.decode_threads) if frame_rate is None
              else frames.open_frames(src, frame_rate, s.decode_threads))
    with source as (inp, vs), contextlib.ExitStack() as cleanup:
        rate, fps_note = pick_rate(vs)
        retimer = Retimer(inp, vs, rate)
        out = None
        for frame, count in retimer:
            if out is None:  # opened at the first frame: a source with none writes nothing
                out = _Output(tmp, s, rate, Geometry.of(frame, vs.sample_aspect_ratio, s.height))
                cleanup.callback(out.abandon)  # on the way out: closes the file unless close() did
            out.write(frame, count)
        out.close()
    g = out.geometry
    return VideoInfo(num_frames=out.n, fps=round(float(rate), 6), width=g.width, height=g.height,
                     bytes_in=bytes_in, bytes_out=tmp.stat().st_size, decode_errors=retimer.errors,
                     source_frames=retimer.decoded, source_seconds=round(float(retimer.end), 6),
                     source_width=round(g.source_size[0]), source_height=round(g.source_size[1]),
                     duplicated=out.n - retimer.shown, dropped=retimer.decoded - retimer.shown,
                     guessed_times=retimer.guessed, orientation=g.orientation, fps_note=fps_note)


class _Output:
    """The output file, set up from the first source frame's geometry; frames written in order.

    n counts the frames sent to the encoder, packets what it gave back (each muxed); close() checks they agree.
    """

    def __init__(self, tmp: Path, s: EncodeSettings, rate: Fraction, geometry: Geometry):
        self.geometry = geometry
        if s.codec == "hevc" and geometry.width < HEVC_MIN_WIDTH:
            raise Rejected(f"too narrow for HEVC: {geometry.width}x{geometry.height} output (x265 corrupts memory "
                           f"below {HEVC_MIN_WIDTH} px wide; NVDEC needs {GPU_MIN_SIZE['hevc'][0]}): raise --height")
        self.n = self.packets = 0  # frames sent to the encoder; packets muxed
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
        self.stream.width, self.stream.height, self.stream.pix_fmt = geometry.width, geometry.height, "yuv420p"
        self.stream.codec_context.time_base = Fraction(rate.denominator, rate.numerator)
        self.stream.codec_context.thread_count = s.threads
        if s.codec == "hevc":
            self.stream.codec_context.codec_tag = "hvc1"  # FFmpeg's MP4 default is hev1 (in-band parameter sets)

    def write(self, frame: av.VideoFrame, count: int) -> None:
        """Write frame as the next `count` output frames (0: the frame is dropped)."""
        if count <= 0:
            return
        f = self.geometry.apply(frame, self.scaler, self.threads)
        f.pict_type = av.video.frame.PictureType.NONE  # the source's I-frames must not force keys
        for _ in range(count):
            f.pts, f.time_base = self.n, self.stream.codec_context.time_base
            self._mux(self.stream.encode(f))
            self.n += 1

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
