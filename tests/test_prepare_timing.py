"""Preparation keeps the source's time and geometry: retiming to a constant rate, display rotation, report notes.

Sources carry their frame index in the blue level (tests/videos.py), are written losslessly (FFV1, x264 crf 0)
with chosen timestamps, and the outputs are encoded at a low crf, so every output frame tells which source
frame it shows.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from videos import decode_code, frame_rgb

import prepare_data
from pipeline.video import (
    MAX_GAP_S,
    Clock,
    Rejected,
    display_matrix,
    display_transform,
    frame_slot,
    output_size,
    pick_rate,
)
from prepare import run
from prepare import transcode as transcode_module
from prepare.transcode import CODECS, EncodeSettings, keyframe_indices, transcode

W, H = 96, 64
SETTINGS = EncodeSettings(height=64, crf=4, gop=8)


def write_timed(path: Path, times: list[int], time_base: Fraction, codec: str = "ffv1", rate: int = 30,
                size: tuple[int, int] = (W, H), rotation: tuple[int, bool, bool] | None = None,
                frames: list[np.ndarray] | None = None) -> Path:
    """Frame i = frame_rgb(i) (or frames[i]) with pts times[i] in time_base; the container follows the extension.

    rotation: (degrees counter-clockwise, hflip, vflip) for the display matrix (PyAV's set_display_rotation).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    options = {"libx264": {"crf": "0", "bf": "2"}}.get(codec, {})  # x264 with B-frames: reordered decode
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, options=options)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(*rotation)
        for i, t in enumerate(times):
            img = frame_rgb(i, w, h) if frames is None else frames[i]
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = t, time_base
            c.mux(s.encode(f))
        c.mux(s.encode())
    return path


def decoded(path: Path) -> tuple[list[np.ndarray], list[Fraction]]:
    """Every frame of path as RGB (H, W, 3) uint8, and its presentation time in seconds."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return [f.to_ndarray(format="rgb24") for f in frames], [f.pts * f.time_base for f in frames]


def shown(path: Path) -> list[int]:
    """Which source frame (index mod 32) each output frame shows."""
    images, _ = decoded(path)
    return decode_code([img[..., 2].mean() for img in images]).tolist()


def source_seconds(path: Path) -> float:
    """First frame's pts to the end of the last frame (its duration), as the source file says."""
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        tb = c.streams.video[0].time_base
    return float((frames[-1].pts + frames[-1].duration - frames[0].pts) * tb)


def assert_cfr_output(path: Path, info, gop: int = SETTINGS.gop) -> None:
    """The output guarantees: the frame count, constant rate, keyframe every gop frames."""
    _, times = decoded(path)
    assert len(times) == info.num_frames
    assert np.allclose(np.diff([float(t) for t in times]), 1 / info.fps, atol=1e-3)
    assert keyframe_indices(path) == list(range(0, info.num_frames, gop))


# ---------------------------------------------------------------- the rules as pure functions


def test_frame_slot_is_the_latest_frame_shown_with_a_quarter_frame_of_slack():
    rate = Fraction(30)
    assert [frame_slot(Fraction(i, 30), rate) for i in range(5)] == [0, 1, 2, 3, 4]  # exact CFR: i -> i
    assert frame_slot(Fraction(67, 1000), rate) == 2  # Matroska's 1 ms rounding of 2/30 s = 66.67 ms
    assert frame_slot(Fraction(1, 120), rate) == 1  # a quarter period late: the next output frame
    assert frame_slot(Fraction(1, 121), rate) == 0
    assert frame_slot(Fraction(1, 10), rate) == 3  # a 10 fps frame starts output frame 3


def test_clock_reads_pts_then_dts_then_counts():
    c = Clock(Fraction(1, 1000), Fraction(25))
    assert c(500) == 0  # the first frame is time 0
    assert c(None, 540) == Fraction(40, 1000)  # no pts: the packet's dts
    assert c(None, None) == Fraction(80, 1000)  # neither: one output period later
    assert c(580) == Fraction(120, 1000)  # not after the previous time (broken): counted
    assert c(820) == Fraction(320, 1000)  # a gap is kept
    assert c(820 + (MAX_GAP_S + 1) * 1000) == Fraction(360, 1000)  # an implausible jump: counted
    assert c.guessed == 3
    assert c.end(40) == Fraction(400, 1000) and c.end(0) == Fraction(400, 1000)  # duration, else a period
    assert Clock(Fraction(1, 25), Fraction(25))(None) == 0


@pytest.mark.parametrize(("rotation", "key", "text"), [
    ((0, False, False), (False, False, False), ""),
    ((-90, False, False), (True, True, False), "rotated 90° clockwise"),
    ((90, False, False), (True, False, True), "rotated 90° counter-clockwise"),
    ((180, False, False), (False, True, True), "rotated 180°"),
    ((0, True, False), (False, True, False), "flipped horizontally"),
    ((0, False, True), (False, False, True), "flipped vertically"),
    ((-90, True, False), (True, False, False), "rotated 90° clockwise and flipped horizontally"),
    ((90, True, False), (True, True, True), "rotated 90° counter-clockwise and flipped horizontally"),
])
def test_display_transform_of_each_axis_aligned_matrix(tmp_path, rotation, key, text):
    src = write_timed(tmp_path / "r.mp4", [0], Fraction(1, 30), "libx264", rotation=rotation)
    with av.open(str(src)) as c:
        frame = next(c.decode(video=0))
    assert display_transform(display_matrix(frame)) == (key, text)


def test_output_size_follows_the_display_orientation():
    assert output_size(1920, 1080, None, 360, transpose=True) == (202, 360)  # a phone's portrait video
    assert output_size(720, 480, Fraction(32, 27), 360, transpose=True) == (202, 360)  # 16:9 DVD turned: 9:16


def test_display_transform_ignores_other_angles():
    c, s = round(65536 * np.cos(np.pi / 4)), round(65536 * np.sin(np.pi / 4))
    assert display_transform(np.array([c, s, 0, -s, c, 0, 0, 0, 1 << 30], np.int32)) == (
        (False, False, False), "not applied: the display matrix turns by 45° (only 90° steps are)")
    assert display_transform(None) == ((False, False, False), "")


# ---------------------------------------------------------------- retiming real files


def test_vfr_mkv_is_retimed_by_presentation_time(tmp_path):
    # 30 frames at 30 fps, then 10 at 10 fps. Matroska stores milliseconds: 33, 67, 100, ... (rounded).
    src = write_timed(tmp_path / "vfr.mkv", [i * 10 for i in range(30)] + [300 + 30 * i for i in range(10)],
                      Fraction(1, 300))
    info = transcode(src, tmp_path / "out.webm", SETTINGS)
    seconds = source_seconds(src)  # 1.933: the last frame lasts 33 ms (the track's default duration)
    assert seconds == pytest.approx(1.933)
    assert info.fps == 30.0  # ffmpeg's rate for a Matroska file: the track's default duration, first frames
    assert info.num_frames == round(seconds * 30) == 58
    # output frame k shows the source frame on screen at k / 30 s: 0..29, then each 10 fps frame 3 times
    expected = list(range(30)) + [30 + (k - 30) // 3 for k in range(30, 58)]
    assert shown(tmp_path / "out.webm") == [i % 32 for i in expected]
    assert abs(info.num_frames / info.fps - seconds) <= 0.05 * seconds
    assert (info.source_frames, info.duplicated, info.dropped, info.guessed_times) == (40, 18, 0, 0)
    assert info.source_seconds == pytest.approx(seconds)
    assert_cfr_output(tmp_path / "out.webm", info)


def test_faster_part_of_a_vfr_source_drops_frames(tmp_path):
    # 10 fps for 1 s, then 40 fps for 1 s. ffmpeg's rate for this Matroska file is the track's default
    # duration (100 ms: 10 fps), so the fast part is sampled every 4th frame.
    times = [40 * i for i in range(10)] + [400 + 10 * i for i in range(40)]
    src = write_timed(tmp_path / "fast.mkv", times, Fraction(1, 400), rate=10)
    info = transcode(src, tmp_path / "out.webm", SETTINGS)
    assert info.fps == 10.0
    seconds = source_seconds(src)  # 2.075: the last frame lasts the default 100 ms
    assert info.num_frames == round(seconds * 10) == 21
    expected = list(range(10)) + list(range(10, 50, 4)) + [49]  # at 2.0 s the last frame (1.975 s) is on screen
    assert shown(tmp_path / "out.webm") == [i % 32 for i in expected]
    assert (info.duplicated, info.dropped) == (0, 29)


def test_avi_with_dropped_frame_slots_repeats_the_last_picture(tmp_path):
    # An AVI at 15 fps whose capture dropped frames: 30 slots, 7 coded pictures (like a webcam recording whose
    # header claimed 444 frames where 68 decode). The gaps are held, so the duration stays 2 s.
    slots = [0, 1, 2, 10, 11, 20, 29]
    src = write_timed(tmp_path / "gaps.avi", slots, Fraction(1, 15), rate=15)
    info = transcode(src, tmp_path / "out.webm", SETTINGS)
    assert (info.fps, info.num_frames, info.source_frames) == (15.0, 30, 7)
    expected = [max(i for i, s in enumerate(slots) if s <= k) for k in range(30)]
    assert shown(tmp_path / "out.webm") == expected
    assert (info.duplicated, info.dropped, info.source_seconds) == (23, 0, 2.0)
    assert_cfr_output(tmp_path / "out.webm", info)


def test_b_frames_and_a_pts_gap_in_mp4(tmp_path):
    # x264 with B-frames (decode order != presentation order), 25 fps with a 0.4 s hole after frame 11.
    times = [i * 3600 for i in range(12)] + [(i + 10) * 3600 for i in range(12, 24)]
    src = write_timed(tmp_path / "hole.mp4", times, Fraction(1, 90000), "libx264", rate=25)
    info = transcode(src, tmp_path / "out.webm", SETTINGS)
    assert (info.fps, info.num_frames, info.duplicated, info.dropped) == (25.0, 34, 10, 0)
    assert shown(tmp_path / "out.webm") == list(range(12)) + [11] * 10 + list(range(12, 24))
    assert_cfr_output(tmp_path / "out.webm", info)


def test_cfr_source_is_unchanged_frame_for_frame(tmp_path):
    src = write_timed(tmp_path / "cfr.mp4", [i * 512 for i in range(40)], Fraction(1, 12800), "libx264", rate=25)
    info = transcode(src, tmp_path / "out.webm", SETTINGS)
    assert (info.num_frames, info.duplicated, info.dropped, info.guessed_times) == (40, 0, 0, 0)
    assert shown(tmp_path / "out.webm") == [i % 32 for i in range(40)]


def test_raw_stream_without_timestamps_is_counted_at_its_nominal_rate(tmp_path):
    # A raw H.264 elementary stream has no container timestamps: frames decode with neither pts nor dts.
    src = write_timed(tmp_path / "raw.h264", list(range(10)), Fraction(1, 25), "libx264", rate=25)
    with av.open(str(src)) as c:
        assert {(f.pts, f.dts) for f in c.decode(video=0)} == {(None, None)}
    info = transcode(src, tmp_path / "out.webm", SETTINGS)
    assert (info.num_frames, info.fps, info.guessed_times, info.duplicated, info.dropped) == (10, 25.0, 10, 0, 0)
    assert shown(tmp_path / "out.webm") == list(range(10))


def test_retimed_output_is_deterministic(tmp_path):
    src = write_timed(tmp_path / "vfr.mkv", [0, 10, 20, 60, 70, 150], Fraction(1, 300))
    transcode(src, tmp_path / "a.webm", SETTINGS)
    transcode(src, tmp_path / "b.webm", SETTINGS)
    assert (tmp_path / "a.webm").read_bytes() == (tmp_path / "b.webm").read_bytes()


# ---------------------------------------------------------------- rotation


def _corner_marked(w: int, h: int) -> np.ndarray:
    """The test pattern with a white block in the top-left corner."""
    img = frame_rgb(0, w, h)
    img[: h // 4, : w // 4] = 255
    return img


@pytest.mark.parametrize("rotation", [(-90, False, False), (90, False, False), (180, False, False),
                                      (0, True, False), (0, False, True), (-90, True, False)])
def test_rotated_source_comes_out_upright(tmp_path, rotation):
    """The output is what a player shows: np.rot90 (counter-clockwise) by the degrees, then the flips."""
    img = _corner_marked(192, 128)
    src = write_timed(tmp_path / "phone.mp4", [0, 1, 2], Fraction(1, 30), "libx264", size=(192, 128),
                      rotation=rotation, frames=[img] * 3)
    info = transcode(src, tmp_path / "out.webm", EncodeSettings(height=96, crf=4))
    want = np.rot90(img, rotation[0] // 90)
    want = want[:, ::-1] if rotation[1] else want
    want = want[::-1] if rotation[2] else want
    portrait = rotation[0] % 180 != 0
    assert (info.width, info.height) == ((64, 96) if portrait else (144, 96))
    assert (info.source_width, info.source_height) == ((128, 192) if portrait else (192, 128))
    out = decoded(tmp_path / "out.webm")[0][0].astype(np.float64)
    small = av.VideoFrame.from_ndarray(np.ascontiguousarray(want), format="rgb24").reformat(
        width=info.width, height=info.height, interpolation="BICUBIC").to_ndarray(format="rgb24")
    assert np.abs(out - small).mean() < 4  # same picture (codec noise only)
    mh, mw = info.height // 4, info.width // 4
    corners = {"tl": out[:mh, :mw], "tr": out[:mh, -mw:], "bl": out[-mh:, :mw], "br": out[-mh:, -mw:]}
    white = [k for k, v in corners.items() if v.mean() > 240]
    where = {(-90, False, False): "tr", (90, False, False): "bl", (180, False, False): "br",
             (0, True, False): "tr", (0, False, True): "bl", (-90, True, False): "tl"}
    assert white == [where[rotation]]


# ---------------------------------------------------------------- report notes


def report(dst: Path) -> dict:
    return json.loads((dst / "prepare_report.json").read_text())


def test_report_notes_upscaled_single_frame_small_rotated_retimed(tmp_path, capsys, monkeypatch):
    wide = Console(width=400)  # summary lines unwrapped
    monkeypatch.setattr(prepare_data, "console", lambda: wide)
    d = tmp_path / "src" / "train" / "k"
    big = write_timed(d / "big.mkv", list(range(20)), Fraction(1, 25), rate=25, size=(256, 160))
    low = write_timed(d / "low.mkv", list(range(20)), Fraction(1, 25), rate=25, size=(96, 64))
    still = write_timed(d / "still.mp4", [0], Fraction(1, 25), "libx264", rate=25, size=(256, 160))
    phone = write_timed(d / "phone.mp4", list(range(10)), Fraction(1, 25), "libx264", rate=25, size=(192, 144),
                        rotation=(-90, False, False))
    gaps = write_timed(d / "gaps.avi", [0, 1, 2, 10, 11, 20, 29], Fraction(1, 15), rate=15, size=(256, 160))
    dst = tmp_path / "dst"
    assert prepare_data.main([str(tmp_path / "src"), "--out", str(dst), "--height", "128", "--workers", "1"]) == 0
    n = report(dst)["notes"]
    assert n == {
        "upscaled": {"count": 1, "files": {str(low): "upscaled 64->128 px (2x)"}},
        "single_frame": {"count": 1, "files": {str(still): "1 source frame: the output is a still image"}},
        "small": {"count": 1, "files": {str(phone): "96x128 is below 128x128, the smallest the GPU decoder "
                                                    "(NVDEC) decodes: raise --height"}},
        "rotated": {"count": 1, "files": {str(phone): "rotated 90° clockwise"}},
        "retimed": {"count": 1, "frames_duplicated": 23, "frames_dropped": 0,
                    "files": {str(gaps): "7 frames over 2.00 s -> 30 at 15 fps: 23 duplicated, 0 dropped"}},
        "timestamps_guessed": {"count": 0, "files": {}},
        "fps_unknown": {"count": 0, "files": {}},
    }
    assert str(big) not in json.dumps(n)
    df = pd.read_csv(dst / "train.csv")
    assert dict(zip(df["video_id"], df["num_frames"], strict=True)) == {
        "big": 20, "gaps": 30, "low": 20, "phone": 10, "still": 1}
    assert dict(zip(df["video_id"], zip(df["width"], df["height"], strict=True), strict=True))["phone"] == (96, 128)
    out = capsys.readouterr().out
    table = " ".join(out.split())
    assert "│ upscaled (source lower than --height) │ 1 │" in table
    assert "│ retimed to a constant rate (VFR, dropped frames) │ 1 (23 frames duplicated, 0 dropped) │" in table
    assert f"note: {low}: upscaled 64->128 px (2x)\n" in out


def test_records_of_the_previous_revision_are_redone_not_crashed_on(tmp_path):
    d = tmp_path / "src" / "train" / "k"
    write_timed(d / "a.mkv", list(range(8)), Fraction(1, 25), rate=25)
    write_timed(d / "b.mkv", list(range(8)), Fraction(1, 25), rate=25)
    dst = tmp_path / "dst"
    args = [str(tmp_path / "src"), "--out", str(dst), "--height", "32", "--workers", "1"]
    assert prepare_data.main(args) == 0
    records = sorted((dst / run.RECORDS).rglob("*.json"))
    assert [p.name for p in records] == ["a.webm.json", "b.webm.json"]
    old = json.loads(records[0].read_text())  # as revision 1 wrote it: no revision, a free-text note
    old["settings"].pop("revision")
    old["info"] = {k: old["info"][k] for k in ("num_frames", "fps", "width", "height", "bytes_in", "bytes_out",
                                               "decode_errors")} | {"note": ""}
    records[0].write_text(json.dumps(old))
    current = json.loads(records[1].read_text())  # this revision, written before a field was added: defaults
    current["info"].pop("orientation")
    records[1].write_text(json.dumps(current))
    assert prepare_data.main(args) == 0
    assert report(dst)["videos"] == {"listed": 2, "prepared": 1, "reused": 1, "rejected": 0}


# ---------------------------------------------------------------- frame count without a second decode


def frames_per_packet(path: Path) -> list[int]:
    """Frames a fresh one-thread decoder gives for each packet of path, in order, then at the flush (last entry)."""
    with av.open(str(path)) as c:
        vs = c.streams.video[0]
        decoder = av.CodecContext.create(vs.codec_context.name, "r")
        decoder.extradata = vs.codec_context.extradata  # MP4: the parameter sets live in the header (avcC, hvcC)
        decoder.thread_count = 1
        counts = [len(decoder.decode(p)) for p in c.demux(vs) if p.size]
    return counts + [len(decoder.decode(None))]


def timing_sources(folder: Path) -> dict[str, tuple[Path, int]]:
    """Sources whose outputs are plain, retimed (frames duplicated and dropped) and rotated: (path, frames out)."""
    vfr = [i * 10 for i in range(30)] + [300 + 30 * i for i in range(10)] + [600 + 5 * i for i in range(20)]
    return {
        "cfr": (write_timed(folder / "cfr.mkv", list(range(20)), Fraction(1, 25), rate=25), 20),
        # 1 s at 30 fps, 1 s at 10 fps (each frame 3 times), 1/3 s at 60 fps (every other frame dropped)
        "retimed": (write_timed(folder / "vfr.mkv", vfr, Fraction(1, 300)), 71),
        "rotated": (write_timed(folder / "phone.mp4", list(range(12)), Fraction(1, 25), "libx264", rate=25,
                                size=(96, 64), rotation=(-90, False, False)), 12),
    }


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_frame_count_without_decode_is_exact_for_every_codec(tmp_path, codec):
    """num_frames comes from the encoder's packets; a full decode of the output must give the same number.

    Also the property the count rests on: every packet is one shown frame, given at once (no hidden frames, no
    reordering delay), and nothing comes out at the flush.
    """
    for kind, (src, expected) in timing_sources(tmp_path).items():
        s = EncodeSettings(codec=codec, height=96, gop=8, crf=20)  # >= 64 px wide: HEVC_MIN_WIDTH
        out = tmp_path / f"{kind}{s.extension}"
        info = transcode(src, out, s)
        assert info.num_frames == expected, kind
        assert_cfr_output(out, info)  # decodes every frame: len == info.num_frames
        assert frames_per_packet(out) == [1] * expected + [0], kind
        if kind == "retimed":
            assert (info.duplicated, info.dropped) == (20, 9)
        if kind == "rotated":
            assert (info.width, info.height, info.orientation) == (64, 96, "rotated 90° clockwise")


def test_hevc_outputs_too_narrow_for_x265_are_rejected(tmp_path):
    src = write_timed(tmp_path / "src.mkv", list(range(4)), Fraction(1, 25), rate=25)  # 96x64
    with pytest.raises(Rejected, match=r"too narrow for HEVC: 42x28 output"):
        transcode(src, tmp_path / "out.mp4", EncodeSettings(codec="hevc", height=28))
    assert not list(tmp_path.glob("*.mp4*")) and not list(tmp_path.glob(".out.mp4*"))
    assert transcode(src, tmp_path / "out.mp4", EncodeSettings(codec="hevc", height=44)).width == 66


@pytest.mark.parametrize("codec", sorted(CODECS))
def test_each_gop_decodes_alone(tmp_path, codec):
    """Closed GOPs: the packets from a keyframe to the next decode, with a fresh decoder, to the same frames as a
    decode of the whole file (what GOP-slice readers rely on), and in presentation order (no B-frames)."""
    src = write_timed(tmp_path / "src.mkv", list(range(20)), Fraction(1, 25), rate=25)
    s = EncodeSettings(codec=codec, height=64, gop=8, crf=20)
    out = tmp_path / f"out{s.extension}"
    transcode(src, out, s)
    with av.open(str(out)) as c:
        whole = [f.to_ndarray() for f in c.decode(video=0)]
        c.seek(0)
        vs = c.streams.video[0]
        packets = [p for p in c.demux(vs) if p.size]
        extradata, name = vs.codec_context.extradata, vs.codec_context.name
    assert len(packets) == len(whole) == 20
    assert [p.pts for p in packets] == sorted(p.pts for p in packets)
    assert all(p.pts == p.dts for p in packets)
    for k in keyframe_indices(out):
        decoder = av.CodecContext.create(name, "r")
        decoder.extradata = extradata
        gop = [f.to_ndarray() for p in [*packets[k:k + 8], None] for f in decoder.decode(p)]
        want = whole[k:k + 8]
        assert len(gop) == len(want) and all(np.array_equal(a, b) for a, b in zip(gop, want, strict=True))


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_source_decoder_threads_decode_with_them_and_never_change_the_bytes(tmp_path, monkeypatch, codec):
    """One worker on a free core decodes its source with frame threads (issue 12); decoding is exact, so the output
    is the same bytes, and the same output for reuse. x264 with B-frames: frame threads with reordering."""
    src = write_timed(tmp_path / "src.mkv", list(range(24)), Fraction(1, 25), codec=codec, rate=25)
    seen = []

    def spy(vs):
        seen.append(vs.codec_context.thread_count)
        return pick_rate(vs)

    monkeypatch.setattr(transcode_module, "pick_rate", spy)
    one = transcode(src, tmp_path / "one.webm", SETTINGS)
    three = replace(SETTINGS, decode_threads=3)
    assert transcode(src, tmp_path / "three.webm", three) == one
    assert seen == [1, 3]
    assert (tmp_path / "one.webm").read_bytes() == (tmp_path / "three.webm").read_bytes()
    assert three.identity() == SETTINGS.identity()


@pytest.mark.parametrize(("cores", "workers", "threads", "decode_threads"),
                         [(2, 1, 1, 2), (2, 2, 1, 1), (16, 4, 1, 4), (16, 5, 1, 3), (2, 4, 1, 1), (2, 1, 3, 3)])
def test_each_worker_decodes_with_the_cores_no_other_worker_uses(tmp_path, cores, workers, threads, decode_threads):
    args = prepare_data.parse_args([str(tmp_path / "src"), "--format", "folders", "--workers", str(workers),
                                    "--threads", str(threads)])
    (tmp_path / "src").mkdir()
    settings = replace(prepare_data.make_config(args), cores=cores).encode_settings()
    assert (settings.threads, settings.decode_threads) == (threads, decode_threads)


def test_verify_decodes_the_output_and_catches_a_wrong_count(tmp_path, monkeypatch):
    src = write_timed(tmp_path / "src.mkv", list(range(10)), Fraction(1, 25), rate=25)
    plain = transcode(src, tmp_path / "a.webm", SETTINGS)
    verified = transcode(src, tmp_path / "b.webm", EncodeSettings(height=64, crf=4, gop=8, verify=True))
    assert verified == plain  # same info, same bytes: verify only checks
    assert (tmp_path / "a.webm").read_bytes() == (tmp_path / "b.webm").read_bytes()
    assert SETTINGS.identity() == EncodeSettings(height=64, crf=4, gop=8, verify=True).identity()  # outputs reused
    monkeypatch.setattr(transcode_module, "count_frames", lambda path: (9, 96, 64))
    with pytest.raises(Rejected, match=r"output check failed: wrote 10 frames 96x64, decoded 9 frames 96x64"):
        transcode(src, tmp_path / "c.webm", EncodeSettings(height=64, crf=4, gop=8, verify=True))
    assert not (tmp_path / "c.webm").exists()


def test_an_encoder_that_loses_a_frame_is_caught_without_decoding(tmp_path, monkeypatch):
    """The packet count is checked against the frames sent: a lost packet rejects the output (no decode needed)."""
    src = write_timed(tmp_path / "src.mkv", list(range(10)), Fraction(1, 25), rate=25)
    mux, lost = transcode_module._Output._mux, []

    def lose_the_first(self, packets):
        if packets and not lost:
            lost.append(packets.pop(0))
        mux(self, packets)

    monkeypatch.setattr(transcode_module._Output, "_mux", lose_the_first)
    with pytest.raises(Rejected, match=r"output check failed: sent 10 frames to the encoder, it wrote 9 packets"):
        transcode(src, tmp_path / "out.webm", SETTINGS)
    assert not list(tmp_path.glob("out.webm*")) and not list(tmp_path.glob(".out.webm*"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts /proc/self/fd")
def test_a_transcode_that_fails_mid_encode_closes_its_output(tmp_path, monkeypatch):
    """A worker lives for many videos: a timeout or an encoder error must not leave the output open (PyAV does
    not close a started output container, even when it is garbage-collected)."""
    src = write_timed(tmp_path / "src.mkv", list(range(10)), Fraction(1, 25), rate=25)
    write = transcode_module._Output.write

    def fail_at_frame_5(self, frame, count):
        if self.n >= 5:  # packets already muxed: the container has started
            raise RuntimeError("encoder failed")
        write(self, frame, count)

    monkeypatch.setattr(transcode_module._Output, "write", fail_at_frame_5)

    def open_fds():
        gc.collect()  # earlier tests' garbage may close fds: before the snapshot, not during the comparison
        return set(os.listdir("/proc/self/fd"))

    def open_in_tmp():
        return [fd for fd in os.listdir("/proc/self/fd") if _target(fd).startswith(str(tmp_path))]

    before = open_fds()
    for _ in range(3):
        with pytest.raises(RuntimeError, match="encoder failed"):
            transcode(src, tmp_path / "out.webm", SETTINGS)
    assert open_in_tmp() == []
    assert open_fds() - before == set()
    assert not list(tmp_path.glob("*out.webm*"))


def _target(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # closed since it was listed
        return ""
