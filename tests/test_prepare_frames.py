"""prepare_data.py on 3D-ResNets-PyTorch's JPEG frame folders (jpg-frames): SRC/<label>/<video_id>/image_%05d.jpg
plus its annotation JSON. The frames carry their index in their blue level (tests/videos.py), so the test can tell
which JPEG each output frame shows."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from test_prepare import read_manifest, rows
from videos import decode_code, frame_rgb

import prepare_data
from prepare import layouts

W, H = 96, 64


def write_frames(folder: Path, numbers: list[int]) -> Path:
    """JPEGs image_<k>.jpg for k in numbers, showing frame_rgb(k - 1), written as generate_video_jpgs.py writes
    them (FFmpeg's image2 muxer, MJPEG, full-range yuvj420p)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in numbers:  # one file each: numbers may have gaps
        with av.open(str(folder / f"image_{k:05d}.jpg"), "w", format="image2", options={"update": "1"}) as c:
            s = c.add_stream("mjpeg", rate=30)
            s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
            s.codec_context.qmax = s.codec_context.qmin = 2  # quality close to generate_video_jpgs.py's -q:v 2
            frame = av.VideoFrame.from_ndarray(frame_rgb(k - 1, W, H), format="rgb24")
            for p in [*s.encode(frame), *s.encode()]:
                c.mux(p)
    return folder


def annotation(labels: list[str], videos: dict[str, tuple[str, str | None, list[int] | None]]) -> dict:
    """Their JSON: {"labels", "database": {id: {"subset", "annotations": {"label", "segment"}}}}."""
    db = {}
    for vid, (subset, label, segment) in videos.items():
        ann = {} if label is None else {"label": label}
        if segment is not None:
            ann["segment"] = segment
        db[vid] = {"subset": subset, "annotations": ann}
    return {"labels": labels, "database": db}


@pytest.fixture(scope="module")
def frames_src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("frames")
    src = root / "jpg"
    write_frames(src / "walk" / "vid_a", list(range(1, 41)))  # 40 frames
    write_frames(src / "jump" / "vid_b", list(range(1, 19)))
    write_frames(src / "test" / "vid_c", list(range(1, 21)))  # no label: their code keeps it under test/
    write_frames(src / "jump" / "vid_d", list(range(1, 31)))
    write_frames(src / "jump" / "vid_gap", [1, 2, 4])  # image_00003.jpg lost
    write_frames(src / "walk" / "vid_extra", [1, 2])  # in no JSON
    doc = annotation(["walk", "jump"], {  # not sorted: class indices are the JSON's
        "vid_a": ("training", "walk", [1, 41]), "vid_b": ("validation", "jump", [1, 19]),
        "vid_c": ("testing", None, [1, 21]), "vid_d": ("training", "jump", [5, 15]),
        "vid_gap": ("training", "jump", [1, 4]), "vid_missing": ("training", "walk", [1, 30])})
    (root / "kinetics.json").write_text(json.dumps(doc))  # next to SRC, as their scripts write it
    return src


def prepare(src: Path, dst: Path, *extra: str) -> int:
    return prepare_data.main([str(src), "--out", str(dst), "--height", "64", "--crf", "4", "--workers", "1", *extra])


def decoded_codes(path: Path) -> list[int]:
    with av.open(str(path)) as c:
        return [int(decode_code(f.to_ndarray(format="rgb24")[..., 2].mean())) for f in c.decode(video=0)]


def test_frame_folders_become_videos_and_manifests(frames_src, tmp_path):
    assert layouts.detect_layout(frames_src) == "jpg-frames"
    dst = tmp_path / "dst"
    assert prepare(frames_src, dst) == 0
    assert rows(pd.read_csv(dst / "classes.csv")) == [(0, "walk"), (1, "jump")]
    assert rows(read_manifest(dst, "train")) == [
        ("vid_a", "videos/walk/vid_a.webm", 0, "walk", "train", 40, 30.0, 96, 64, 0, 40),
        ("vid_d", "videos/jump/vid_d.webm", 1, "jump", "train", 30, 30.0, 96, 64, 4, 14),  # segment [5, 15)
    ]
    assert rows(read_manifest(dst, "val")) == [("vid_b", "videos/jump/vid_b.webm", 1, "jump", "val", 18, 30.0, 96,
                                                64, 0, 18)]
    assert rows(read_manifest(dst, "test")) == [("vid_c", "videos/_unlabelled/vid_c.webm", -1, "", "test", 20, 30.0,
                                                 96, 64, 0, 20)]
    assert rows(pd.read_csv(dst / "rejected.csv")) == [
        (str(frames_src / "jump" / "vid_gap"), "frames missing: image_00003.jpg absent (3 of image_00001.jpg to "
                                                "image_00004.jpg present)"),
        (str(frames_src / "walk" / "vid_extra"), "not listed in kinetics.json"),
        ("kinetics.json:vid_missing", f"missing: listed in kinetics.json but no folder walk/vid_missing under "
                                      f"{frames_src}")]
    r = json.loads((dst / "prepare_report.json").read_text())
    assert r["videos"] == {"listed": 7, "prepared": 4, "reused": 0, "rejected": 3}
    assert r["listing"] == {"annotations": [str(frames_src.parent / "kinetics.json")], "fps": 30.0,
                            "fps_given": False, "manifests": ["train", "val", "test"]}


def test_output_frame_k_shows_jpeg_k(frames_src, tmp_path):
    dst = tmp_path / "dst"
    assert prepare(frames_src, dst) == 0
    # output frame k (0-based) is image_<k+1>.jpg, whose blue level says k (mod 32)
    assert decoded_codes(dst / "videos/walk/vid_a.webm") == [k % 32 for k in range(40)]
    assert decoded_codes(dst / "videos/jump/vid_d.webm") == list(range(30))
    with av.open(str(dst / "videos/walk/vid_a.webm")) as c:  # full-range JPEG levels kept: not clipped or stretched
        first = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(first - frame_rgb(0, W, H).astype(int)).mean() < 4


def test_fps_flag_sets_the_rate_and_the_report_says_so(frames_src, tmp_path):
    dst = tmp_path / "dst"
    assert prepare(frames_src, dst, "--fps", "25") == 0
    assert read_manifest(dst, "train")["fps"].tolist() == [25.0, 25.0]
    assert read_manifest(dst, "train")["num_frames"].tolist() == [40, 30]  # one output frame per JPEG at any rate
    r = json.loads((dst / "prepare_report.json").read_text())
    assert (r["listing"]["fps"], r["listing"]["fps_given"]) == (25.0, True)
    with av.open(str(dst / "videos/walk/vid_a.webm")) as c:
        assert c.streams.video[0].average_rate == 25
    assert prepare(frames_src, dst, "--fps", "25") == 0  # the same again: every video reused
    assert json.loads((dst / "prepare_report.json").read_text())["videos"]["reused"] == 4
    # another rate is another output: a rerun at 30 fps redoes every video
    assert prepare(frames_src, dst) == 0
    assert json.loads((dst / "prepare_report.json").read_text())["videos"]["prepared"] == 4


def test_several_jsons_give_a_manifest_set_each_and_one_video_each(tmp_path):
    src = tmp_path / "jpg"
    write_frames(src / "walk" / "v1", list(range(1, 9)))
    write_frames(src / "jump" / "v2", list(range(1, 11)))
    for k, (a, b) in enumerate([("training", "validation"), ("validation", "training")], start=1):
        doc = annotation(["jump", "walk"], {"v1": (a, "walk", [1, 9]), "v2": (b, "jump", [1, 11])})
        (tmp_path / f"ucf101_0{k}.json").write_text(json.dumps(doc))
    dst = tmp_path / "dst"
    assert prepare(src, dst) == 2  # two JSONs next to SRC: which? the user says
    assert prepare(src, dst, "--annotations", str(tmp_path / "ucf101_01.json"), str(tmp_path / "ucf101_02.json")) == 0
    assert sorted(p.name for p in dst.glob("*.csv")) == ["classes.csv", "rejected.csv", "train1.csv", "train2.csv",
                                                        "val1.csv", "val2.csv"]
    assert rows(read_manifest(dst, "train1")) == [("v1", "videos/walk/v1.webm", 1, "walk", "train1", 8, 30.0, 96, 64,
                                                   0, 8)]
    assert rows(read_manifest(dst, "val1")) == [("v2", "videos/jump/v2.webm", 0, "jump", "val1", 10, 30.0, 96, 64, 0,
                                                 10)]
    assert read_manifest(dst, "train2")["video_id"].tolist() == ["v2"]
    assert read_manifest(dst, "val2")["video_id"].tolist() == ["v1"]
    assert len(list((dst / "videos").rglob("*.webm"))) == 2


def test_frame_flags_on_another_layout_are_usage_errors(tmp_path):
    (tmp_path / "src" / "train" / "k").mkdir(parents=True)
    for flags in (["--fps", "25"], ["--split", "2"]):
        with pytest.raises(SystemExit) as e:
            prepare(tmp_path / "src", tmp_path / "dst", *flags)
        assert e.value.code == 2


def test_a_full_range_video_source_keeps_its_levels(tmp_path):
    """Full-range pixels (MJPEG here; JPEG frames above) are brought to the output's limited range: before, they
    were copied as they were and read back stretched (dark levels clipped to black, blue code 0 for frames 0-2)."""
    src = tmp_path / "src" / "train" / "k" / "mjpeg.avi"
    src.parent.mkdir(parents=True)
    with av.open(str(src), "w") as c:
        s = c.add_stream("mjpeg", rate=25)
        s.width, s.height, s.pix_fmt = W, H, "yuvj420p"
        s.codec_context.qmax = s.codec_context.qmin = 2
        for i in range(20):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_rgb(i, W, H), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    dst = tmp_path / "dst"
    assert prepare(tmp_path / "src", dst) == 0
    assert decoded_codes(dst / "videos/train/k/mjpeg.webm") == list(range(20))
    with av.open(str(dst / "videos/train/k/mjpeg.webm")) as c:
        first = next(c.decode(video=0)).to_ndarray(format="rgb24").astype(int)
    assert np.abs(first - frame_rgb(0, W, H).astype(int)).mean() < 4


def test_frame_folders_in_two_shards_give_the_same_manifests(frames_src, tmp_path):
    single, dst = tmp_path / "single", tmp_path / "dst"
    assert prepare(frames_src, single) == 0
    assert prepare(frames_src, dst, "--shard", "1/2") == 0
    assert prepare(frames_src, dst, "--shard", "0/2") == 0
    for name in ("train.csv", "val.csv", "test.csv", "classes.csv", "rejected.csv"):
        assert (dst / name).read_bytes() == (single / name).read_bytes(), name
    r, one = (json.loads((d / "prepare_report.json").read_text()) for d in (dst, single))
    assert (r["videos"], r["listing"], r["notes"]) == (one["videos"], one["listing"], one["notes"])
