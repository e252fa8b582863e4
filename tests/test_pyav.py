"""The pyav backend (pipeline/pyav_loader.py) beyond what every backend is checked for in tests/test_pipeline.py:
real-looking clips against the paper's order in float64 through the whole loader, the in-flight bound, its
threads and decoders, and the rows and files it refuses (one line naming the file and the fix)."""

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from test_augment import paper_order, planes_of, psnr
from videos import COLUMNS, make_dataset, textured_frames

from pipeline import DatasetError, build_loader
from pipeline.augment import nv12_crop_to_rgb
from pipeline.normalisation import Normalisation
from pipeline.prepare.sample import write_video as write_frames
from pipeline.pyav_loader import PyAVLoader

T, S = 16, 24
ZERO = (0.0, 0.0, 0.0)


def load(data, split="train", mode="train", **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("sample_size", S)
    kw.setdefault("normalisation", Normalisation(ZERO))
    return build_loader(data, split=split, mode=mode, backend="pyav", progress=False, **kw)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 test-pattern videos (tests/videos.py), 96x64, lengths 16..100."""
    return make_dataset(tmp_path_factory.mktemp("pyav"), {"train": [{"frames": n} for n in
                                                                     [40, 10, 100, 33, 17, 64, 50, 16, 81, 23, 70, 29]]})


@pytest.fixture(scope="module")
def textured(tmp_path_factory):
    """2 real-looking videos (tests/videos.textured_frames), 240 px high, lossy VP9 as prepare_data.py writes."""
    root = tmp_path_factory.mktemp("pyav_textured")
    pd.DataFrame({"index": [0], "name": ["a"]}).to_csv(root / "classes.csv", index=False)
    rows = []
    for i, n in enumerate([40, 26]):
        rel = f"videos/train/a/t{i}.webm"
        write_frames(root / rel, textured_frames(n, 320, 240, seed=i), 25, "libvpx-vp9", gop=16)
        rows.append([f"t{i}", rel, 0, "a", "train", n, 25.0, 320, 240, 0, n])
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "train.csv", index=False)
    return root


def test_clips_match_the_paper_order_on_real_looking_video(textured):
    """Each clip of two train epochs (plan frames, box, flip) against the float64 paper order computed from the
    whole file decoded from its start: >= 40 dB, so frames, boxes, flips and the pixel operations all hold."""
    import av

    mean = (110.5, 103.25, 96.0)
    with load(textured, batch_size=2, sample_size=112, normalisation=Normalisation(mean)) as loader:
        files = loader.videos["file"].tolist()
        whole = {}
        for r, f in enumerate(files):
            with av.open(f) as c:
                y, uv = planes_of(list(c.decode(video=0)))
            h, w = y.shape[1:]
            parts = [nv12_crop_to_rgb(torch.from_numpy(y)[None], torch.from_numpy(uv)[None], torch.tensor([[h, w]]),
                                      torch.tensor([[x0, 0, h]]), h, torch.tensor([0]))[0].numpy() for x0 in (0, w - h)]
            whole[r] = np.concatenate([parts[0], parts[1][..., 2 * h - w:]], axis=-1).transpose(0, 2, 3, 1)
        worst = []
        for e in range(2):
            loader.set_epoch(e)
            plan = loader.plan
            clips = torch.cat([b.clips for b in loader]).numpy()
            for k in range(len(plan)):
                want = paper_order(whole[int(plan.rows[k])][plan.frames[k]], plan.boxes[k], plan.flips[k], 112, mean)
                worst.append(psnr(clips[k], want))
                wrong_frames = paper_order(whole[int(plan.rows[k])][np.roll(plan.frames[k], 1)], plan.boxes[k],
                                           plan.flips[k], 112, mean)
                assert psnr(clips[k], wrong_frames) < 40  # one frame off shows
    assert min(worst) >= 40, worst


def test_at_most_batch_times_prefetch_clips_in_flight(data, monkeypatch):
    """Clips started by the workers and not yet delivered to the consumer never exceed batch_size x prefetch,
    with a consumer slower than the decoders; the bound is reached (it is the prefetch, not a stall)."""
    started, delivered, worst = [0], [0], [0]
    lock = threading.Lock()
    real = PyAVLoader._decode_clip

    def counting(self, *args):
        with lock:
            started[0] += 1
            worst[0] = max(worst[0], started[0] - delivered[0])
        return real(self, *args)

    monkeypatch.setattr(PyAVLoader, "_decode_clip", counting)
    with load(data, batch_size=2, num_threads=3, prefetch=2) as loader:
        for batch in loader:
            with lock:
                delivered[0] += len(batch.labels)
            threading.Event().wait(0.05)  # a slow consumer: the workers run ahead as far as they may
        assert loader.max_in_flight == 4
    assert worst[0] == 4 and started[0] == delivered[0] == 12


def test_worker_threads_each_keep_their_own_decoder_and_close_joins_them(data):
    with load(data, batch_size=2, num_threads=3) as loader:
        contexts = set()
        real = loader._context

        def spy(codec):
            ctx = real(codec)
            contexts.add((threading.get_ident(), id(ctx)))
            return ctx

        loader._context = spy
        for e in range(2):
            loader.set_epoch(e)
            assert len(list(loader)) == 6
        assert [t.name for t in threading.enumerate() if t.name.startswith("pyav")]
    threads, decoders = {t for t, _ in contexts}, {d for _, d in contexts}
    assert len(threads) == len(decoders) <= 3  # one decoder per thread, kept across clips and epochs
    assert not [t for t in threading.enumerate() if t.name.startswith("pyav")]
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))


def test_workers_run_torch_on_one_thread_and_leave_the_process_default(data, monkeypatch):
    """Each worker's torch ops run with 1 intra-op thread (no OpenMP team: the only OS threads the epochs add
    are the num_threads workers), the iterating thread keeps its count, and a thread that first uses torch
    after the epoch gets the process default, not the workers' 1."""
    import os

    counts, lock = set(), threading.Lock()
    real = PyAVLoader._decode_clip

    def spy(self, *args):
        with lock:
            counts.add(torch.get_num_threads())
        return real(self, *args)

    monkeypatch.setattr(PyAVLoader, "_decode_clip", spy)
    before_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tasks = set(os.listdir("/proc/self/task"))  # the process's OS threads
        with load(data, batch_size=4, num_threads=2, sample_size=112) as loader:
            for e in range(2):
                loader.set_epoch(e)
                assert len(list(loader)) == 3
            new = set(os.listdir("/proc/self/task")) - tasks
            workers = {str(t.native_id) for t in threading.enumerate() if t.name.startswith("pyav")}
            assert len(workers) == 2 and new == workers
        later = []
        t = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
        t.start()
        t.join()
        assert counts == {1} and torch.get_num_threads() == 2 and later == [2]
    finally:
        torch.set_num_threads(before_threads)


def test_close_in_the_middle_of_an_epoch(data):
    loader = load(data, "train", "eval", batch_size=1, num_threads=2)
    batches = iter(loader)
    next(batches)
    loader.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("pyav")]
    with pytest.raises(RuntimeError, match="closed"):
        next(batches)


def test_rows_it_cannot_read_are_refused_or_skipped(tmp_path, capsys):
    """B-frames (packet k is not frame k) and a codec that needs its container's extradata (MPEG-4 Part 2)."""
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}] * 4})
    df = pd.read_csv(root / "train.csv")
    bframes, mpeg4 = root / "videos" / "b.mp4", root / "videos" / "m.avi"
    write_frames(bframes, textured_frames(20, 96, 64), 25, "libx264")  # gop None: as downloaded, with B-frames
    write_frames(mpeg4, textured_frames(20, 96, 64), 25, "mpeg4")
    df.assign(path=["videos/b.mp4", *df["path"][1:]]).to_csv(root / "train.csv", index=False)
    with pytest.raises(DatasetError, match=f"{bframes}: frames are reordered.*prepare_data.py"):
        load(root)
    loader = load(root, batch_size=1, skip_bad=True)
    assert "skipping 1 bad row(s) of 4" in capsys.readouterr().out and loader.skipped == 1
    df.assign(path=["videos/m.avi", *df["path"][1:]]).to_csv(root / "train.csv", index=False)
    with pytest.raises(DatasetError, match=f"{mpeg4}: codec mpeg4 is not read by the pyav backend.*--codec vp9"):
        load(root)


def test_a_frame_that_is_not_yuv420p_is_one_named_error(tmp_path):
    import av

    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}]})
    victim = root / pd.read_csv(root / "train.csv")["path"][0]
    with av.open(str(victim), "w") as c:  # VP9 profile 1: 4:4:4 (sample.write_video writes 4:2:0 only)
        s = c.add_stream("libvpx-vp9", rate=25, options={"g": "16", "lossless": "1"})
        s.width, s.height, s.pix_fmt = 96, 64, "yuv444p"
        for img in textured_frames(20, 96, 64):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv444p")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    with load(root, mode="val", batch_size=1) as loader, pytest.raises(
            DatasetError, match=f"{victim}: frames 2..17: frame 2 is yuv444p 96x64; the loader reads yuv420p"):
        list(loader)


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_a_file_damaged_after_indexing_is_one_named_error(tmp_path, damage):
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}, {"frames": 24}]})
    victim = root / pd.read_csv(root / "train.csv")["path"][1]
    with load(root, mode="val", batch_size=1) as loader:
        if damage == "delete":
            victim.unlink()
        else:
            victim.write_bytes(bytes(victim.stat().st_size))
        with pytest.raises(DatasetError, match=f"{victim}: frames 4..19: .*prepare_data.py"):
            list(loader)


@pytest.mark.gpu
def test_gpu_device_matches_cpu(data):
    cpu = torch.cat([b.clips for b in load(data)])
    with load(data, device="gpu", device_id=0) as loader:
        gpu = [b.clips for b in loader]
    assert gpu[0].is_cuda
    assert (torch.cat(gpu).cpu() - cpu).abs().max() <= 1e-3
