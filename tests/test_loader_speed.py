"""benchmarks/loader_speed.py's timing rule and memory columns, and the decord loader's in-flight bound."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from videos import make_dataset

from pipeline import build_loader
from pipeline.backends.decord import MAX_BATCHES_IN_FLIGHT, batches_in_flight, prefetch_factor
from pipeline.sampling import SCALES

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import loader_speed as bench  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train: 8 videos of 40 frames (2 batches of 4 per train epoch); val: 2 of 32 (2 eval windows each)."""
    root = tmp_path_factory.mktemp("bench")
    return make_dataset(root, {"train": [{"frames": 40}] * 8, "val": [{"frames": 32}] * 2})


# ---- the decord loader's memory bound --------------------------------------------------------------------------


def test_prefetch_factor_keeps_in_flight_batches_within_the_budget():
    assert MAX_BATCHES_IN_FLIGHT == 16
    assert prefetch_factor(0) is None  # no workers: no prefetching at all
    workers = [1, 2, 8, 9, 14, 16, 32]
    assert [prefetch_factor(w) for w in workers] == [2, 2, 2, 1, 1, 1, 1]
    assert [batches_in_flight(w) for w in workers] == [2, 4, 16, 9, 14, 16, 32]
    assert batches_in_flight(0) == 0


class RecordingDataLoader:
    """Stands in for torch's DataLoader: records its arguments, yields nothing (no workers are started)."""

    calls: list[dict] = []

    def __init__(self, dataset, **kwargs):
        RecordingDataLoader.calls.append(kwargs)

    def __iter__(self):
        return iter(())


@pytest.mark.parametrize(("threads", "prefetch", "in_flight"), [(14, 1, 14), (2, 2, 4), (0, None, 0)])
def test_decord_loader_passes_the_bound_to_its_dataloader(data, monkeypatch, threads, prefetch, in_flight):
    monkeypatch.setattr(torch.utils.data, "DataLoader", RecordingDataLoader)
    RecordingDataLoader.calls = []
    with build_loader(data, split="train", mode="train", backend="decord", batch_size=4, workers=threads,
                      sample_size=24, progress=False) as loader:
        assert list(loader) == [] and list(loader) == []
    (kw,) = RecordingDataLoader.calls  # one DataLoader for all epochs
    assert kw["num_workers"] == threads and kw["prefetch_factor"] == prefetch
    assert kw["persistent_workers"] == (threads > 0)  # workers started once, not per epoch
    assert kw["multiprocessing_context"] == ("forkserver" if threads else None)  # never a fork of this process
    assert threads * (kw["prefetch_factor"] or 0) == in_flight == bench.in_flight("decord", threads, 2)


def test_decord_workers_deliver_what_one_process_makes(data):
    """Batches filled in place in shared memory by a worker equal the in-process batches, bit for bit."""

    def epoch(threads):
        with build_loader(data, split="train", mode="train", backend="decord", batch_size=4, workers=threads,
                          sample_size=24, progress=False) as loader:
            loader.set_epoch(3)
            return [tuple(x.numpy() for x in b) for b in loader]

    one, workers = epoch(0), epoch(2)
    assert len(one) == len(workers) == 2
    for a, b in zip(one, workers, strict=True):
        assert a[0].shape == (4, 3, 16, 24, 24) and a[0].dtype == np.float32
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


# ---- the timing rule -------------------------------------------------------------------------------------------


class FakeLoader:
    """An epoch of `batches` batches of `clips` clips on a fake clock: `startup` s at iter() (worker start-up,
    prefetch fill), then `per_batch` s per batch."""

    def __init__(self, batches=3, clips=8, startup=2.0, per_batch=1.0):
        self.batches, self.clips, self.startup, self.per_batch = batches, clips, startup, per_batch
        self.now, self.epochs = 0.0, []

    def clock(self):
        return self.now

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def __iter__(self):
        self.now += self.startup
        for _ in range(self.batches):
            self.now += self.per_batch
            yield SimpleNamespace(labels=[0] * self.clips)


def test_timed_runs_are_whole_epochs_and_include_start_up():
    fake = FakeLoader()  # one epoch: 2 s start-up + 3 x 1 s = 5 s, 24 clips
    runs = bench.timed_runs(fake, runs=2, min_seconds=12, warmup_epochs=1, clock=fake.clock,
                            cpu_seconds=lambda: 0.0)
    # 3 epochs (15 s) is the fewest whole epochs >= 12 s; the start-up of every epoch is in the window.
    assert runs == [{"clips": 72, "epochs": 3, "wall_s": 15.0, "clips_per_s": 4.8, "cpu_util": 0.0,
                     "first_batch_s": 3.0}] * 2
    assert fake.epochs == [0, 1, 2, 3, 4, 5, 6]  # warm-up epoch 0 untimed, then fresh epochs back to back


def test_timed_runs_at_least_one_epoch():
    fake = FakeLoader(batches=2, clips=4, startup=0.5, per_batch=0.25)
    (run,) = bench.timed_runs(fake, runs=1, min_seconds=0, warmup_epochs=0, clock=fake.clock,
                              cpu_seconds=lambda: 0.0)
    assert (run["epochs"], run["clips"], run["wall_s"], run["clips_per_s"]) == (1, 8, 1.0, 8.0)
    assert fake.epochs == [0]


def test_spread():
    assert bench.spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}


# ---- memory columns --------------------------------------------------------------------------------------------


def test_tree_memory_counts_child_processes():
    before_rss, before_pss = bench.tree_memory(os.getpid())
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; x = b'1' * (96 << 20); print('ready', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ready"  # 96 MiB written: resident in the child
        rss, pss = bench.tree_memory(os.getpid())
    finally:
        child.communicate("")
    assert rss - before_rss > 90 << 20 and pss - before_pss > 90 << 20


# ---- one configuration end to end (in this process, tiny data) --------------------------------------------------


@pytest.mark.parametrize("name", ["decord-cpu", "dali-cpu"])
def test_measure_row(data, name):
    cfg, _ = bench.parse_args(["--configs", name, "--modes", "train", "--batch-size", "4", "--sample-size", "24",
                               "--runs", "2", "--min-seconds", "0", "--warmup-epochs", "1"])
    row = bench.measure(cfg, name, "train", Path(data))
    assert row["epochs_per_run"] == [1, 1] and row["clips_per_run"] == [8, 8] and row["clips_per_epoch"] == 8
    assert row["clips_per_s_min"] <= row["clips_per_s"] <= row["clips_per_s_max"]
    assert row["clips_per_s"] == pytest.approx(np.median(row["runs"]))
    assert 0 < row["peak_pss_mb"] <= row["peak_rss_sum_mb"]
    assert row["batch_mb"] == 4 * 3 * 16 * 24 * 24 * 4 / 2**20
    assert row["in_flight_batches"] == (4 if name == "decord-cpu" else 2)  # 2 workers x 2; DALI queue depth 2
    if name == "decord-cpu":
        assert row["worker_maxrss_mb"] > 0  # reaped DataLoader workers


# ---- the anchors: the 2017 JPEG loader and the decode floor; storage; the summary -------------------------------


def test_jpeg_frames_anchors_and_summary(data, tmp_path):
    """JPEG frames as ffmpeg's scale=-1:H would write them (one per frame, image_00001.jpg first, width by the
    aspect ratio); the jpeg-2017, floor and pyav-cpu rows on the same plan; storage; the summary's lines."""
    from PIL import Image

    from benchmarks import jpeg2017

    bench.prepare_jpegs(data, 48)
    first = data / "jpeg2017" / "videos" / "train" / "a" / "train000"
    assert (first / "done").read_text() == "40 cfr\n" and len(list(first.glob("image_*.jpg"))) == 40
    with Image.open(first / "image_00001.jpg") as im:
        assert im.format == "JPEG" and im.size == (72, 48)  # 96x64 at 48 px high
    cfg, _ = bench.parse_args(["--modes", "train", "--batch-size", "4", "--sample-size", "24", "--runs", "1",
                               "--min-seconds", "0", "--warmup-epochs", "0", "--threads", "1"])
    rows = [dict(bench.measure(cfg, name, "train", Path(data)), height=48)
            for name in ("pyav-cpu", "jpeg-2017", "floor")]
    for r in rows:
        assert r["clips_per_run"] == [8] and r["clips_per_cpu_s"] > 0, r["config"]
    assert [r["in_flight_clips"] for r in rows] == [8, 8, 0]  # pyav 4 x prefetch 2; DataLoader 1 worker x 2 x 4
    from pipeline.base import LoaderBase, LoaderConfig

    with LoaderBase(LoaderConfig(data=data, split="train", mode="train", batch_size=4, sample_size=24,
                                 progress=False)) as base:
        jpeg = jpeg2017.JpegLoader(base, data / "jpeg2017", 4, 0, 24)
        clips = [b for b in jpeg]
        plan = jpeg.plan()
    assert [tuple(b.clips.shape) for b in clips] == [(4, 3, 16, 24, 24)] * 2
    np.testing.assert_array_equal(np.concatenate([b.labels.numpy() for b in clips]), base.labels[plan.rows])
    np.testing.assert_array_equal(plan.boxes[:, 2], np.floor(48 * np.array(SCALES)[plan.scales] + 1e-9))
    st = bench.storage(Path(data))
    assert st["minutes"] == pytest.approx(8 * 40 / 25 / 60) and st["video_mb_per_min"] > 0 and st["jpeg_mb_per_min"] > 0
    lines = bench.summary(rows, {48: st}, ("train",))
    assert lines[0].startswith("48 px: storage MB per video-minute: prepared VP9 ")
    assert lines[1].startswith("48 px train: pyav-cpu ") and "x JPEG baseline (" in lines[1] and "x decode floor (" in lines[1]
    assert lines[1].endswith("up to 8 clips in flight")


def test_jpeg_frames_are_retimed_as_ffmpegs_image2_output(tmp_path):
    """A source whose frames 3 and 4 are missing (timestamps 0, 1, 2, 5, 6 at 25 fps; tree.avi shows 68 frames
    over 444 slots): ffmpeg's image2 output is constant-rate, so frame 2 fills slots 2-4: 7 JPEGs showing source
    frames 0, 1, 2, 2, 2, 5, 6, as many as prepare_data.py's video of it has. A folder extracted by the old rule
    (one JPEG per decoded frame, its marker naming no rule) is extracted again."""
    import av
    from PIL import Image
    from videos import decode_code, frame_rgb

    from benchmarks import jpeg2017
    from pipeline.video import Retimer, open_source, pick_rate

    src = tmp_path / "holes.mkv"
    with av.open(str(src), "w") as c:
        s = c.add_stream("libvpx-vp9", rate=25, options={"lossless": "1"})
        s.width, s.height, s.pix_fmt = 96, 64, "yuv420p"
        for i in (0, 1, 2, 5, 6):
            frame = av.VideoFrame.from_ndarray(frame_rgb(i, 96, 64), format="rgb24").reformat(format="yuv420p")
            frame.pts = i  # in the encoder's time base, 1/25 s
            c.mux(s.encode(frame))
        c.mux(s.encode())
    with open_source(src) as (container, stream):
        slots = sum(count for _, count in Retimer(container, stream, pick_rate(stream)[0]))
    out = tmp_path / "jpegs"
    assert jpeg2017.extract_jpegs(src, out, 48) == 7 == slots
    assert (out / "done").read_text() == "7 cfr\n"
    codes = []
    for k in range(1, 8):
        with Image.open(out / f"image_{k:05d}.jpg") as im:
            assert im.size == (72, 48)
            codes.append(int(decode_code(np.asarray(im.convert("RGB"))[..., 2].mean())))
    assert codes == [0, 1, 2, 2, 2, 5, 6]
    (out / "done").write_text("5\n")  # the old rule's marker
    (out / "image_00008.jpg").write_bytes(b"stale")
    assert jpeg2017.extract_jpegs(src, out, 48) == 7 and not (out / "image_00008.jpg").exists()
    assert jpeg2017.scaled_size(320, 240, 240) == (320, 240) and jpeg2017.scaled_size(720, 528, 240) == (327, 240)
    assert jpeg2017.scaled_size(240, 320, 112) == (112, 149) and jpeg2017.scaled_size(99, 99, 48) == (48, 48)


def test_main_alternates_rounds_and_writes_the_rows(data, tmp_path, capsys):
    """The command end to end on --data: each config once per round, in turn; one row per config with the
    medians over rounds; the summary printed; the JSON written."""
    import json

    out = tmp_path / "rows.json"
    assert bench.main(["--data", str(data), "--configs", "pyav-cpu,floor", "--modes", "train", "--rounds", "2",
                       "--batch-size", "4", "--sample-size", "24", "--min-seconds", "0", "--warmup-epochs", "0",
                       "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    order = [line.split()[0] for line in printed.splitlines() if " round " in line]
    assert order == ["pyav-cpu", "floor", "pyav-cpu", "floor"]  # alternating
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["pyav-cpu", "floor"]
    for r in rows:
        assert len(r["clips_per_cpu_s_rounds"]) == 2 and r["clips_per_cpu_s"] == pytest.approx(
            np.median(r["clips_per_cpu_s_rounds"]))
    assert "dataset train: pyav-cpu " in printed and "x decode floor (" in printed
