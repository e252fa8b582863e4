"""prepare_data.py on tiny generated datasets: every input layout, exact manifests, keyframes, resume, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

import prepare_data
from pipeline import atomic
from pipeline.manifest import COLUMNS
from pipeline.video import Rejected, output_size
from prepare import run
from prepare.listing import Listing, Source
from prepare.sample import write_video
from prepare.transcode import CODECS, EncodeSettings, keyframe_indices

ROOT = Path(__file__).resolve().parent.parent
CODEC = {".webm": "libvpx-vp9", ".mp4": "libx264", ".avi": "mpeg4", ".mkv": "libvpx-vp9"}


def make_video(path: Path, n: int, width: int = 64, height: int = 48, fps: int | Fraction = 25) -> Path:
    """A small moving-gradient video; codec from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = np.arange(width, dtype=np.int64)[None, :, None]
    frames = np.stack([np.broadcast_to((x * 3 + 7 * i) % 256, (height, width, 3)) for i in range(n)])
    write_video(path, frames.astype(np.uint8), fps, CODEC[path.suffix])
    return path


def prepare(src: Path, dst: Path, *extra: str) -> int:
    return prepare_data.main([str(src), "--out", str(dst), "--height", "32", "--workers", "1", *extra])


def read_manifest(dst: Path, split: str) -> pd.DataFrame:
    df = pd.read_csv(dst / f"{split}.csv", keep_default_na=False, dtype={"video_id": str, "label_name": str})
    assert list(df.columns) == list(COLUMNS)  # the columns the loaders read
    return df


def rows(df: pd.DataFrame) -> list[tuple]:
    return [tuple(r) for r in df.itertuples(index=False)]


def report(dst: Path) -> dict:
    return json.loads((dst / "prepare_report.json").read_text())


# ---------------------------------------------------------------- layouts, exact manifests


@pytest.fixture(scope="module")
def folders_run(tmp_path_factory):
    src = tmp_path_factory.mktemp("folders")
    make_video(src / "train" / "jump" / "a.webm", 40)
    make_video(src / "train" / "run fast" / "b ü é.avi", 18, width=80, fps=15)
    make_video(src / "val" / "jump" / "c.mp4", 10, fps=Fraction(30000, 1001))
    (src / "train" / "jump" / "notes.txt").write_text("not a video extension: ignored")
    dst = src.parent / (src.name + "_out")
    assert prepare(src, dst) == 0
    return src, dst


def test_folders_layout_manifest_is_exact(folders_run):
    _, dst = folders_run
    assert rows(read_manifest(dst, "train")) == [
        ("a", "videos/train/jump/a.webm", 0, "jump", "train", 40, 25.0, 42, 32, 0, 40),
        ("b ü é", "videos/train/run fast/b ü é.webm", 1, "run fast", "train", 18, 15.0, 54, 32, 0, 18),
    ]
    assert rows(read_manifest(dst, "val")) == [("c", "videos/val/jump/c.webm", 0, "jump", "val", 10, 29.97003, 42, 32,
                                                0, 10)]
    assert not (dst / "test.csv").exists()
    assert rows(pd.read_csv(dst / "classes.csv")) == [(0, "jump"), (1, "run fast")]
    assert len(pd.read_csv(dst / "rejected.csv")) == 0
    r = report(dst)
    assert r["videos"] == {"listed": 3, "prepared": 3, "reused": 0, "rejected": 0}
    assert r["frames"] == 68 and r["config"]["gop"] == 16


def test_outputs_are_vp9_cfr_with_keyframe_every_gop(folders_run):
    _, dst = folders_run
    out = dst / "videos/train/jump/a.webm"
    assert keyframe_indices(out) == [0, 16, 32]
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        assert vs.codec_context.name == "vp9" and len(c.streams) == 1
        assert vs.average_rate == 25
        frames = list(c.decode(vs))
        assert {f.format.name for f in frames} == {"yuv420p"}
        pts = [f.pts * f.time_base for f in frames]
        assert np.allclose(np.diff([float(p) for p in pts]), 1 / 25, atol=1e-3)  # CFR


def test_h264_codec_option_gives_mp4_with_same_keyframes(tmp_path):
    make_video(tmp_path / "src" / "train" / "x" / "v.avi", 35)
    assert prepare(tmp_path / "src", tmp_path / "dst", "--codec", "h264", "--gop", "8") == 0
    out = tmp_path / "dst/videos/train/x/v.mp4"
    assert keyframe_indices(out) == [0, 8, 16, 24, 32]
    assert read_manifest(tmp_path / "dst", "train")["path"].tolist() == ["videos/train/x/v.mp4"]


def test_hevc_codec_option_gives_mp4_hvc1_with_same_keyframes(tmp_path):
    make_video(tmp_path / "src" / "train" / "x" / "v.avi", 35)
    # --height 64: 86 px wide (x265 is not used below 64 px wide: transcode.HEVC_MIN_WIDTH)
    assert prepare(tmp_path / "src", tmp_path / "dst", "--codec", "hevc", "--gop", "8", "--height", "64") == 0
    out = tmp_path / "dst/videos/train/x/v.mp4"
    assert keyframe_indices(out) == [0, 8, 16, 24, 32]
    df = read_manifest(tmp_path / "dst", "train")
    assert df["path"].tolist() == ["videos/train/x/v.mp4"] and df["num_frames"].tolist() == [35]
    with av.open(str(out)) as c:
        vs = c.streams.video[0]
        assert (vs.codec_context.name, vs.codec_tag, len(c.streams)) == ("hevc", "hvc1", 1)
        assert "mp4" in c.format.name and vs.average_rate == 25
        assert vs.codec_context.profile == "Main" and vs.codec_context.pix_fmt == "yuv420p"
        assert len(list(c.decode(vs))) == 35
    r = report(tmp_path / "dst")
    assert r["config"]["codec"] == "hevc" and r["config"]["crf"] == 28
    assert r["notes"]["small"]["count"] == 1  # 86x64 is below HEVC's NVDEC minimum


def test_outputs_are_the_same_bytes_in_another_process_for_every_codec(tmp_path):
    # Transcodes in two fresh processes whose heaps start differently (glibc fills freed and new blocks with
    # MALLOC_PERTURB_'s byte): an encoder reading uninitialised memory or depending on thread timing would make
    # the bytes differ, as x264's MB-tree did for the sample generator.
    src = make_video(tmp_path / "src.avi", 40, width=96, height=64)
    code = ("import sys; from pathlib import Path; from prepare.transcode import EncodeSettings, transcode\n"
            "for codec in sys.argv[2:]:\n"
            "    s = EncodeSettings(codec=codec, height=48, gop=8)\n"
            "    transcode(Path(sys.argv[1]), Path(sys.argv[1]).with_name(codec + s.extension), s)")
    outputs = {}
    for name, perturb in (("a", "165"), ("b", "77")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "src.avi").write_bytes(src.read_bytes())
        subprocess.run([sys.executable, "-c", code, str(tmp_path / name / "src.avi"), *CODECS], cwd=ROOT,
                       check=True, capture_output=True, env={**os.environ, "MALLOC_PERTURB_": perturb})
        outputs[name] = {p.name: p.read_bytes() for p in (tmp_path / name).iterdir() if p.stem in CODECS}
    assert sorted(outputs["a"]) == ["h264.mp4", "hevc.mp4", "vp9.webm"]
    assert outputs["a"] == outputs["b"]


def test_verify_flag_decodes_every_output_and_changes_nothing(folders_run, tmp_path):
    src, dst = folders_run
    assert prepare(src, tmp_path / "verified", "--verify") == 0
    for split in ("train", "val"):
        assert rows(read_manifest(tmp_path / "verified", split)) == rows(read_manifest(dst, split))
    assert report(tmp_path / "verified")["config"]["verify"] is True
    for p in (dst / "videos").rglob("*.webm"):
        assert (tmp_path / "verified" / p.relative_to(dst)).read_bytes() == p.read_bytes()


def test_outputs_decode_with_decord_and_dali_cpu_to_the_manifest_frame_count(folders_run):
    decord = pytest.importorskip("decord")
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def, types

    _, dst = folders_run
    df = pd.concat([read_manifest(dst, "train"), read_manifest(dst, "val")])
    files = [str(dst / p) for p in df["path"]]
    for f, n, w, h in zip(files, df["num_frames"], df["width"], df["height"], strict=True):
        vr = decord.VideoReader(f)
        assert len(vr) == n and vr.get_batch(list(range(n))).shape == (n, h, w, 3)

    @pipeline_def(batch_size=len(files), num_threads=1, device_id=None, exec_async=False, exec_pipelined=False)
    def whole_files():
        enc = fn.external_source(source=lambda: [np.fromfile(f, np.uint8) for f in files], dtype=types.UINT8)
        return fn.decoders.video(enc, device="cpu")  # every frame, (F, H, W, 3) uint8

    pipe = whole_files()
    pipe.build()
    (out,) = pipe.run()
    shapes = [tuple(out.at(i).shape) for i in range(len(files))]
    assert shapes == [(n, h, w, 3) for n, w, h in zip(df["num_frames"], df["width"], df["height"], strict=True)]


def test_kinetics_layout(tmp_path):
    src = tmp_path / "kinetics"
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "zumba,-abc,10,20,train,0\n"
        '"passing American football (in game)",xyz,0,10,train,0\n'
        "abseiling,gone,5,15,train,0\n")
    (src / "annotations" / "test.csv").write_text("youtube_id,time_start,time_end,split\nqqq,1,11,test\n")
    (src / "annotations" / "notes.csv").write_bytes("remarque,léger\n".encode("latin-1"))  # not UTF-8: not ours
    make_video(src / "train" / "-abc_000010_000020.mp4", 20)
    make_video(src / "train" / "xyz_000000_000010.webm", 17, width=96)
    make_video(src / "train" / "unlisted_000000_000010.mp4", 5)
    make_video(src / "test" / "qqq_000001_000011.mp4", 12)
    assert prepare(src, tmp_path / "dst") == 0
    dst = tmp_path / "dst"
    assert rows(pd.read_csv(dst / "classes.csv")) == [
        (0, "abseiling"), (1, "passing American football (in game)"), (2, "zumba")]
    assert rows(read_manifest(dst, "train")) == [
        ("-abc_000010_000020", "videos/train/zumba/-abc_000010_000020.webm", 2, "zumba", "train", 20, 25.0, 42, 32,
         0, 20),
        ("xyz_000000_000010", "videos/train/passing American football (in game)/xyz_000000_000010.webm", 1,
         "passing American football (in game)", "train", 17, 25.0, 64, 32, 0, 17),
    ]
    assert rows(read_manifest(dst, "test")) == [
        ("qqq_000001_000011", "videos/test/_unlabelled/qqq_000001_000011.webm", -1, "", "test", 12, 25.0, 42, 32,
         0, 12)]
    rejected = dict(rows(pd.read_csv(dst / "rejected.csv")))
    assert rejected[f"{src / 'train' / 'unlisted_000000_000010.mp4'}"] == "not listed in any annotations CSV"
    assert rejected["annotations/train.csv:gone_000005_000015"].startswith("missing: listed in train.csv")


def test_kinetics_duplicated_rows_keep_the_first_and_are_reported(tmp_path):
    """A video listed twice (the same youtube_id and times, in one CSV or two): one manifest row, from the first row
    in the CSVs' sorted order; each later row is a rejected.csv row saying where the kept one is and what differs,
    and counted in the report. The same youtube_id at other times is another clip, kept."""
    src = tmp_path / "kinetics"
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "zumba,abc,10,20,train\n"
        "zumba,abc,10,20,train\n"
        "zumba,abc,30,40,train\n")
    (src / "annotations" / "val.csv").write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "yoga,xyz,0,10,val\n"
        "zumba,abc,10,20,val\n"
        "zumba,xyz,0,10,val\n")
    for name in ("abc_000010_000020", "abc_000030_000040"):
        make_video(src / "train" / f"{name}.mp4", 20)
    make_video(src / "val" / "xyz_000000_000010.mp4", 18)
    dst = tmp_path / "dst"
    assert prepare(src, dst) == 0
    assert rows(read_manifest(dst, "train")) == [
        ("abc_000010_000020", "videos/train/zumba/abc_000010_000020.webm", 1, "zumba", "train", 20, 25.0, 42, 32, 0,
         20),
        ("abc_000030_000040", "videos/train/zumba/abc_000030_000040.webm", 1, "zumba", "train", 20, 25.0, 42, 32, 0,
         20)]
    assert rows(read_manifest(dst, "val")) == [
        ("xyz_000000_000010", "videos/val/yoga/xyz_000000_000010.webm", 0, "yoga", "val", 18, 25.0, 42, 32, 0, 18)]
    assert rows(pd.read_csv(dst / "rejected.csv")) == [
        ("annotations/train.csv:3:abc_000010_000020", "duplicate: the video of train.csv line 2 again; the first row "
         "is kept"),
        ("annotations/val.csv:3:abc_000010_000020", "duplicate: the video of train.csv line 2 again, with split 'val' "
         "(kept: 'train'); the first row is kept"),
        ("annotations/val.csv:4:xyz_000000_000010", "duplicate: the video of val.csv line 2 again, with label 'zumba' "
         "(kept: 'yoga'); the first row is kept")]
    assert report(dst)["videos"] == {"listed": 6, "prepared": 3, "reused": 0, "rejected": 3}
    assert report(dst)["rejected_by_reason"] == {"duplicate": 3}


def test_activitynet_layout_one_row_per_segment(tmp_path):
    src = tmp_path / "anet"
    db = {"database": {
        "aaa": {"subset": "training", "duration": 3.0, "annotations": [
            {"segment": [0.5, 1.5], "label": "Drinking"}, {"segment": [2.0, 9.0], "label": "Drinking"},
            {"segment": [4.0, 5.0], "label": "Drinking"}]},
        "bbb": {"subset": "validation", "duration": 2.0, "annotations": [
            {"segment": [0.0, 1.0], "label": "Surfing"}, {"segment": [1.0, 2.0], "label": "Drinking"}]},
        "ccc": {"subset": "testing", "duration": 2.0, "annotations": []},
        "ddd": {"subset": "training", "duration": 2.0, "annotations": [{"segment": [0, 1], "label": "Kiting"}]},
    }}
    src.mkdir()
    (src / "activity_net.v1-3.min.json").write_text(json.dumps(db))
    make_video(src / "videos" / "v_aaa.mp4", 30, fps=10)
    make_video(src / "videos" / "v_bbb.webm", 20, fps=10)
    make_video(src / "videos" / "ccc.mkv", 20, fps=10)
    assert prepare(src, tmp_path / "dst") == 0
    dst = tmp_path / "dst"
    assert rows(pd.read_csv(dst / "classes.csv")) == [(0, "Drinking"), (1, "Kiting"), (2, "Surfing")]
    a = "videos/train/Drinking/aaa.webm"
    assert rows(read_manifest(dst, "train")) == [
        ("aaa_0", a, 0, "Drinking", "train", 30, 10.0, 42, 32, 5, 15),
        ("aaa_1", a, 0, "Drinking", "train", 30, 10.0, 42, 32, 20, 30),
    ]
    b = "videos/val/_multiple/bbb.webm"
    assert rows(read_manifest(dst, "val")) == [
        ("bbb_0", b, 2, "Surfing", "val", 20, 10.0, 42, 32, 0, 10),
        ("bbb_1", b, 0, "Drinking", "val", 20, 10.0, 42, 32, 10, 20),
    ]
    assert rows(read_manifest(dst, "test")) == [
        ("ccc", "videos/test/_unlabelled/ccc.webm", -1, "", "test", 20, 10.0, 42, 32, 0, 20)]
    rejected = dict(rows(pd.read_csv(dst / "rejected.csv")))
    assert rejected[f"{src / 'videos' / 'v_aaa.mp4'}#segment2"].startswith("empty segment")
    assert rejected["activity_net.v1-3.min.json:ddd"].startswith("missing")
    assert len(list((dst / "videos").rglob("*.webm"))) == 3  # each video transcoded once
    # videos, not rows: ddd is rejected, aaa's empty segment is a rejected.csv row but aaa was prepared
    assert report(dst)["videos"] == {"listed": 4, "prepared": 3, "reused": 0, "rejected": 1}
    assert report(dst)["rejected_by_reason"] == {"empty segment": 1, "missing": 1}


# ---------------------------------------------------------------- bad input


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        s = out.add_stream("libopus", rate=48000)
        for i in range(5):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.float32), format="flt", layout="mono")
            f.sample_rate, f.pts = 48000, i * 960
            out.mux(s.encode(f))
        out.mux(s.encode())


def _garbage_packets(path: Path) -> None:
    """A valid AVI with an MPEG-4 video stream whose packets are random bytes."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for i in range(10):
            p = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            p.stream, p.pts, p.dts, p.time_base = s, i, i, Fraction(1, 25)
            out.mux(p)


def _no_frames(path: Path) -> None:
    """An AVI with a video stream header and no packets."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()


def test_every_kind_of_bad_input_is_rejected_with_its_reason(tmp_path):
    src = tmp_path / "src"
    d = src / "train" / "k"
    good = make_video(d / "good.webm", 20)
    (d / "empty.mp4").parent.mkdir(parents=True, exist_ok=True)
    (d / "empty.mp4").write_bytes(b"")
    data = make_video(tmp_path / "full.mp4", 20).read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])  # MP4 cut before its index
    (d / "text.avi").write_text("hello\n" * 100)
    _audio_only(d / "audio.webm")
    _garbage_packets(d / "garbage.avi")
    _no_frames(d / "noframes.avi")
    unreadable = make_video(d / "locked.webm", 20)
    unreadable.chmod(0)
    dst = tmp_path / "dst"
    try:
        assert prepare(src, dst) == 0
    finally:
        unreadable.chmod(0o644)
    reasons = {Path(s).name: r for s, r in rows(pd.read_csv(dst / "rejected.csv"))}
    assert reasons["empty.mp4"] == "empty file (0 bytes)"
    assert reasons["truncated.mp4"].startswith("not a video: ffmpeg cannot open it")
    assert reasons["text.avi"].startswith("not a video: ffmpeg cannot open it")
    assert reasons["audio.webm"] == "no video stream"
    assert reasons["garbage.avi"].startswith("undecodable: 0 frames decoded")
    assert reasons["noframes.avi"] == "no frames: the video stream has no decodable frames"
    assert reasons["locked.webm"] == "unreadable: permission denied"
    assert len(reasons) == 7
    assert read_manifest(dst, "train")["video_id"].tolist() == [good.stem]
    assert not [p for p in (dst / "videos").rglob("*") if p.is_file() and p.name != "good.webm"]


def test_truncated_webm_keeps_the_frames_that_decode(tmp_path):
    data = make_video(tmp_path / "full.webm", 40, width=160, height=120).read_bytes()
    (tmp_path / "src/train/k").mkdir(parents=True)
    (tmp_path / "src/train/k/cut.webm").write_bytes(data[: len(data) * 2 // 3])
    assert prepare(tmp_path / "src", tmp_path / "dst") == 0
    (n,) = read_manifest(tmp_path / "dst", "train")["num_frames"]
    assert 0 < n < 40
    assert report(tmp_path / "dst")["videos"]["prepared"] == 1


def test_nothing_usable_exits_1_and_usage_errors_exit_2(tmp_path):
    (tmp_path / "src/train/k").mkdir(parents=True)
    (tmp_path / "src/train/k/empty.mp4").write_bytes(b"")
    assert prepare(tmp_path / "src", tmp_path / "dst") == 1
    assert len(pd.read_csv(tmp_path / "dst/rejected.csv")) == 1
    for bad in (["--height", "33"], ["--gop", "0"], ["--crf", "99"], ["--codec", "hevc", "--crf", "52"]):
        with pytest.raises(SystemExit) as e:
            prepare_data.main([str(tmp_path / "src"), "--out", str(tmp_path / "d2"), *bad])
        assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        prepare_data.main([str(tmp_path / "dst")])  # no known layout
    assert e.value.code == 2
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as e:
        prepare_data.main([str(tmp_path / "src"), "--out", str(tmp_path / "a_file")])  # DST is a file
    assert e.value.code == 2
    assert prepare(tmp_path / "src", tmp_path / "a_file" / "dst") == 2  # DST cannot be made: one line, no traceback


def test_a_full_disk_stops_the_run_naming_the_file_and_nothing_is_rejected(tmp_path):
    """DST on a real tmpfs too small for the first video: one line naming the output file and the space free, exit
    status 1, no traceback; the video is not rejected (no record, no rejected.csv row): the next run, with space,
    does it. Before, every video was rejected "error: No space left on device" (no path) and remembered so."""
    from namespaces import in_namespace, namespaces_work

    if not namespaces_work():
        pytest.skip("needs user namespaces (unshare -Urm) for a real full disk")
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):  # noise: its VP9 output is far larger than the disk
        path = src / "train" / "k" / f"{name}.webm"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, rng.integers(0, 256, (30, 96, 128, 3), dtype=np.uint8), 25, "libvpx-vp9")
    dst = tmp_path / "dst"
    dst.mkdir()
    cmd = in_namespace([sys.executable, str(ROOT / "prepare_data.py"), str(src), "--out", str(dst), "--height", "96",
                        "--workers", "1"], tmpfs={dst: 64 * 1024}, after=f"cp -a {dst} {tmp_path / 'kept'}")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert re.fullmatch(rf"error: {re.escape(str(dst))}/videos/train/k/a\.webm: No space left on device \(\d+\.\d KiB "
                        r"free on its disk\); HINT: free space there \(or choose another --out\), then run the same "
                        r"command again: the videos finished are reused", line), line
    kept = tmp_path / "kept"
    assert not [p for p in kept.rglob("*.json")] and not (kept / "rejected.csv").exists()


def _crash_on_boom(job: run.Job, dst: Path, settings: EncodeSettings, timeout_s: int) -> run.Outcome:
    """Stand-in worker: dies like a segfaulting decoder on files named boom*."""
    if job.source.path.name.startswith("boom"):
        run._started_marker(dst, job).parent.mkdir(parents=True, exist_ok=True)
        run._started_marker(dst, job).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return run.work(job, dst, settings, timeout_s)


def test_a_worker_crash_rejects_only_the_culprit(tmp_path):
    paths = [make_video(tmp_path / "src" / f"{name}.webm", 8) for name in ("a", "boom", "c", "d")]
    listing = Listing("folders", [Source(p.stem, p, "train", "k") for p in paths], ["k"])
    settings = EncodeSettings(height=32)
    jobs = run.plan_jobs(listing, settings)
    outcomes = run.run_jobs(jobs, tmp_path / "dst", settings, workers=2, timeout_s=60, worker=_crash_on_boom)
    by_name = {o.job.source.video_id: o for o in outcomes}
    assert sorted(by_name) == ["a", "boom", "c", "d"]
    assert by_name["boom"].reason.startswith("crashed")
    assert all(by_name[k].info.num_frames == 8 for k in "acd")


def _die_at_once(job: run.Job, dst: Path, settings: EncodeSettings, timeout_s: int) -> run.Outcome:
    """Stand-in worker: dies before its job starts, as a worker does that cannot start at all."""
    os._exit(1)


def test_workers_that_die_before_any_job_starts_stop_the_run_instead_of_retrying_forever(tmp_path):
    listing = Listing("folders", [Source(n, tmp_path / f"{n}.webm", "train", "k") for n in "ab"], ["k"])
    settings = EncodeSettings(height=32)
    with pytest.raises(run.WorkersFailed, match=r"^the worker processes died 3 times in a row before starting"):
        run.run_jobs(run.plan_jobs(listing, settings), tmp_path / "dst", settings, workers=1, timeout_s=60,
                     worker=_die_at_once)


def _stuck_opening(src: Path, dst: Path, settings: EncodeSettings, frame_rate: float | None = None):
    """Stand-in transcode: stuck opening the source, in code that reads an OSError there as bad input."""
    try:
        time.sleep(30)
    except OSError:
        raise Rejected("not a video: ffmpeg cannot open it") from None


def test_timeout_is_a_timeout_even_where_the_transcoder_catches_oserror(tmp_path, monkeypatch):
    monkeypatch.setattr(run, "transcode", _stuck_opening)
    job = run.Job(Source("a", tmp_path / "a.webm", "train", "k"), "videos/train/k/a.webm")
    outcome = run.work(job, tmp_path / "dst", EncodeSettings(), timeout_s=1)
    assert outcome.reason.startswith("timeout: not done after 1 s")  # retried on the next run (run.RETRIED)


# ---------------------------------------------------------------- resume and idempotence


def test_rerun_reuses_everything_and_gives_identical_manifests(folders_run, tmp_path):
    src, dst = folders_run
    before = {p: p.read_bytes() for p in dst.glob("*.csv")}
    mtimes = {p: p.stat().st_mtime_ns for p in (dst / "videos").rglob("*.webm")}
    assert prepare(src, dst) == 0
    assert {p: p.read_bytes() for p in dst.glob("*.csv")} == before
    assert {p: p.stat().st_mtime_ns for p in (dst / "videos").rglob("*.webm")} == mtimes
    r = report(dst)
    assert r["videos"]["prepared"] == 0 and r["videos"]["reused"] == 3 and r["frames_transcoded"] == 0


def test_damaged_output_or_changed_settings_are_redone(tmp_path):
    make_video(tmp_path / "src/train/k/a.webm", 20)
    make_video(tmp_path / "src/train/k/b.webm", 20)
    dst = tmp_path / "dst"
    assert prepare(tmp_path / "src", dst) == 0
    out = dst / "videos/train/k/a.webm"
    out.write_bytes(out.read_bytes()[:100])  # as if killed between the rename and ... or damaged later
    assert prepare(tmp_path / "src", dst) == 0
    assert report(dst)["videos"] == {"listed": 2, "prepared": 1, "reused": 1, "rejected": 0}
    assert read_manifest(dst, "train")["num_frames"].tolist() == [20, 20]
    assert prepare(tmp_path / "src", dst, "--gop", "8") == 0
    assert report(dst)["videos"]["prepared"] == 2
    assert keyframe_indices(out) == [0, 8, 16]


def test_unreadable_or_unknown_records_are_redone_not_crashed_on(tmp_path):
    for name in "abcd":
        make_video(tmp_path / "src/train/k" / f"{name}.webm", 8)
    dst = tmp_path / "dst"
    assert prepare(tmp_path / "src", dst) == 0
    records = sorted((dst / run.RECORDS).rglob("*.json"))
    assert [p.name for p in records] == ["a.webm.json", "b.webm.json", "c.webm.json", "d.webm.json"]
    future = json.loads(records[0].read_text())
    future["info"]["field_of_a_later_revision"] = 1  # same settings and revision, a key VideoInfo lacks
    records[0].write_text(json.dumps(future))
    records[1].write_text('{"source_fingerprint": ')  # cut short
    records[2].write_text("[1, 2]")  # JSON, not a record
    assert prepare(tmp_path / "src", dst) == 0
    assert report(dst)["videos"] == {"listed": 4, "prepared": 3, "reused": 1, "rejected": 0}
    assert read_manifest(dst, "train")["num_frames"].tolist() == [8, 8, 8, 8]


def test_killed_run_then_rerun_completes_with_each_video_once(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(8):
        make_video(src / "train" / "k" / f"v{i}.webm", 48, width=160, height=120)
    cmd = [sys.executable, str(ROOT / "prepare_data.py"), str(src), "--out", str(dst), "--workers", "1",
           "--height", "240"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:  # until a video is recorded (its record is written after its rename: waiting for the file alone, the
        # kill could land between the two, and then no video would be reused)
        deadline = time.monotonic() + 120
        while not list((dst / run.RECORDS).rglob("v*.webm.json")) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes, like kill -9 on the group
        proc.wait()
    done_before = len(list((dst / "videos").rglob("v*.webm")))
    assert 1 <= done_before < 8, "the run was not interrupted mid-way; make the videos longer"
    assert not (dst / "train.csv").exists()
    assert subprocess.run(cmd, cwd=ROOT, capture_output=True).returncode == 0
    df = read_manifest(dst, "train")
    assert df["video_id"].tolist() == [f"v{i}" for i in range(8)]
    assert (df["num_frames"] == 48).all()
    assert not [p for p in dst.rglob(".*") if "partial" in p.name or p.name.endswith(".started")]
    assert report(dst)["videos"]["reused"] >= 1


def test_remove_partials_removes_what_a_killed_run_leaves_and_nothing_else(tmp_path):
    job = run.Job(Source("a", tmp_path / "a.avi", "train", "k"), "videos/train/k/a.webm")
    keep = [tmp_path / "train.csv", tmp_path / job.output, run._record_path(tmp_path, job)]
    left = [atomic.temp_path(p) for p in keep] + [atomic.temp_path(tmp_path / "prepare_report.json"),
                                                  run._started_marker(tmp_path, job)]
    for p in keep + left:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("x")
    assert run.remove_partials(tmp_path) == len(left)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(keep)


def test_output_size_keeps_aspect_and_even_width():
    assert output_size(640, 480, None, 360) == (480, 360)
    assert output_size(1920, 1080, None, 360) == (640, 360)
    assert output_size(101, 50, None, 360) == (728, 360)
    assert output_size(720, 480, Fraction(32, 27), 360) == (640, 360)  # anamorphic 16:9 DVD


# ---------------------------------------------------------------- worker start-up


def test_a_worker_process_loads_no_pandas_torch_or_rich():
    """What a spawned worker imports: prepare_data.py again (multiprocessing runs the main script as
    __mp_main__, as runpy.run_path does here) and prepare.run, the module of the job function. pandas
    and rich there cost ~0.35 CPU-s per worker process (issue 12); transcoding needs neither, nor torch."""
    code = ("import runpy, sys; sys.path.insert(0, sys.argv[1]); "
            "runpy.run_path(sys.argv[1] + '/prepare_data.py', run_name='__mp_main__'); "
            "import prepare.run; "
            "print(sorted(m for m in ('pandas', 'torch', 'rich', 'matplotlib', 'av') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["['av']"]  # av: the transcoder itself (this check is not vacuous)
