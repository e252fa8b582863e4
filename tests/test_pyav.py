"""The pyav backend (pipeline/backends/pyav.py) beyond what every backend is checked for in tests/test_pipeline.py:
real-looking clips against the paper's order in float64 through the whole loader, the in-flight bound, its
threads and decoders, and the rows and files it refuses (one line naming the file and the fix)."""

import threading

import numpy as np
import pandas as pd
import pytest
import torch
from test_augment import paper_order, planes_of, psnr
from videos import COLUMNS, frame_rgb, make_dataset, textured_frames, write_hidden_frame_ivf, write_ivf

from pipeline import DatasetError, build_loader
from pipeline.augment import nv12_crop_to_rgb
from pipeline.backends.pyav import PyAVLoader, problems
from pipeline.headers import CHROMA_420, CHROMA_422, CHROMA_444
from pipeline.index.table import PacketTable, VideoIndex
from pipeline.manifest import HINT
from pipeline.normalisation import Normalisation
from prepare.sample import write_video as write_frames

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

    norm = Normalisation((110.5, 103.25, 96.0))
    with load(textured, batch_size=2, sample_size=112, normalisation=norm) as loader:
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
                want = paper_order(whole[int(plan.rows[k])][plan.frames[k]], plan.boxes[k], plan.flips[k], 112, norm)
                worst.append(psnr(clips[k], want))
                wrong_frames = paper_order(whole[int(plan.rows[k])][np.roll(plan.frames[k], 1)], plan.boxes[k],
                                           plan.flips[k], 112, norm)
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
    with load(data, batch_size=2, workers=3, prefetch=2) as loader:
        for batch in loader:
            with lock:
                delivered[0] += len(batch.labels)
            threading.Event().wait(0.05)  # a slow consumer: the workers run ahead as far as they may
        assert loader.max_in_flight == 4
    assert worst[0] == 4 and started[0] == delivered[0] == 12


def test_worker_threads_each_keep_their_own_decoder_and_close_joins_them(data):
    with load(data, batch_size=2, workers=3) as loader:
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
    are the `workers` worker threads), the iterating thread keeps its count, and a thread that first uses torch
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
        with load(data, batch_size=4, workers=2, sample_size=112) as loader:
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
    loader = load(data, "train", "eval", batch_size=1, workers=2)
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


PIXELS_FIX = "the pyav backend reads 8-bit 4:2:0: re-prepare with prepare_data.py (it writes 8-bit 4:2:0), or use " \
    "backend='decord'"


def test_problems_name_each_reason_and_its_fix():
    """pyav.problems on index rows, one per reason, in order of precedence (a row that fails several gets the
    first); rows without packets (bad files, answered for already) get ""."""
    one = np.zeros(1, np.int64)

    def video(codec="vp9", width=96, height=64, **kw):
        return VideoIndex(codec, width, height, 25.0, one, one.astype(np.int32), np.ones(1, bool), **kw)

    table = PacketTable.from_videos([
        video(), video("h264"), video("hevc"), video("vp8"), video("mpeg4", bit_depth=10), video("hevc", bit_depth=10),
        video(chroma=CHROMA_422), video(chroma=CHROMA_444), video("h264", reordered=True, chroma=CHROMA_422),
        video("h264", reordered=True), video(shown=0, odd_packets=1), video(codec="vp9", width=97, height=63),
    ]).take(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, -1]))  # fmt: skip
    got = problems(None, table).tolist()
    assert got[:4] == ["", "", "", ""] and got[11:] == ["", ""]  # odd sizes are not refused (4:2:0 chroma rounds up)
    assert got[4] == ("codec mpeg4 is not read by the pyav backend (vp8, vp9, h264, hevc); re-prepare with "
                      "prepare_data.py --codec vp9, or use backend='decord'")
    assert got[5:9] == [f"10-bit 4:2:0 pixels; {PIXELS_FIX}", f"8-bit 4:2:2 pixels; {PIXELS_FIX}",
                        f"8-bit 4:4:4 pixels; {PIXELS_FIX}", f"8-bit 4:2:2 pixels; {PIXELS_FIX}"]
    assert got[9] == ("frames are reordered (B-frames), so packet k is not frame k; re-prepare with prepare_data.py "
                      "(it writes no B-frames), or use backend='decord'")
    assert got[10] == ("1 of its 1 packets do not show exactly one frame (hidden VP8/VP9 frames stored in packets of "
                       "their own), so packet k is not frame k; re-prepare with prepare_data.py (it writes one frame "
                       "per packet), or use backend='dali' (it decodes such files whole)")


def test_hidden_frames_in_packets_of_their_own_are_refused_superframes_decode(tmp_path, capsys):
    """The crafted VP9 file whose hidden keyframes sit in packets of their own (42 packets, 40 frames: packet k
    is not frame k after frame 8) is refused when the loader is built, naming the file and the fix; the same
    frames packed in superframes, as FFmpeg's muxers store them, decode to exactly the plan's frames."""
    from test_pipeline import check_clip_content

    root = tmp_path / "ds"
    rows = []
    for i, packed in enumerate([True, False]):
        rel = f"videos/val/a/v{i}.ivf"
        write_hidden_frame_ivf(root / rel, 40, hide=[8, 24], packed=packed)
        rows.append([f"v{i}", rel, 0, "a", "val", 40, 25.0, 96, 64, 0, 40])
    pd.DataFrame({"index": [0], "name": ["a"]}).to_csv(root / "classes.csv", index=False)
    pd.DataFrame(rows, columns=COLUMNS).to_csv(root / "val.csv", index=False)
    split = root / "videos/val/a/v1.ivf"
    with pytest.raises(DatasetError) as e:
        load(root, "val", "eval")
    assert str(e.value).startswith(
        f"{split}: 2 of its 42 packets do not show exactly one frame (hidden VP8/VP9 frames stored in packets of "
        "their own), so packet k is not frame k; re-prepare with prepare_data.py (it writes one frame per packet), "
        "or use backend='dali' (it decodes such files whole) (val.csv row 3, video 'v1'); 1 bad row(s)")
    with load(root, "val", "eval", batch_size=2, skip_bad=True) as loader:
        assert loader.skipped == 1 and "skipping 1 bad row(s) of 2" in capsys.readouterr().out
        plan = loader.plan
        clips = torch.cat([b.clips for b in loader]).numpy()
    assert len(clips) == 2 and plan.rows.tolist() == [0, 0]
    for k in range(2):  # eval windows 0..15 and 16..31: across both hidden keyframes
        check_clip_content(clips[k], plan.frames[k], plan.boxes[k], False)


def encode(path, encoder: str, pix_fmt: str, n: int = 20, options: dict | None = None) -> list[bytes]:
    """The test pattern (frame_rgb), 96x64, as `encoder` writes it in pix_fmt, into `path`; returns its packets."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream(encoder, rate=25, options=options or {})
        s.width, s.height, s.pix_fmt = 96, 64, pix_fmt
        for i in range(n):
            c.mux(s.encode(av.VideoFrame.from_ndarray(frame_rgb(i, 96, 64), format="rgb24").reformat(format=pix_fmt)))
        c.mux(s.encode())
    with av.open(str(path)) as c:
        return [bytes(p) for p in c.demux(video=0) if p.size]


def test_ten_bit_422_and_444_rows_are_refused_when_the_loader_is_built(tmp_path, capsys):
    """Real 10-bit HEVC, 4:2:2 H.264 and 4:4:4 VP9 files: each refused with its layout and the fix when the loader
    is built (before the index recorded pixel layouts, a 4:4:4 row failed mid-epoch, and a 10-bit one would have
    been copied as if its 16-bit samples were 8-bit)."""
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}] * 4})
    df = pd.read_csv(root / "train.csv")
    for (encoder, pix_fmt), rel in zip([("libx265", "yuv420p10le"), ("libx264", "yuv422p"), ("libvpx-vp9", "yuv444p")],
                                       ["videos/h.mp4", "videos/x.mp4", "videos/v.webm"], strict=True):
        encode(root / rel, encoder, pix_fmt, options={"x265-params": "log-level=error", "bf": "0", "g": "16"})
    df.assign(path=["videos/h.mp4", "videos/x.mp4", "videos/v.webm", df["path"][3]]).to_csv(root / "train.csv",
                                                                                           index=False)
    with pytest.raises(DatasetError) as e:
        load(root, mode="val")
    assert str(e.value).startswith(f"{root / 'videos/h.mp4'}: 10-bit 4:2:0 pixels; {PIXELS_FIX} (train.csv row 2, "
                                   "video 'train000'); 3 bad row(s)")
    with pytest.raises(DatasetError) as e:  # more than 10 % bad: skip_bad does not cover it
        load(root, mode="val", skip_bad=True)
    assert str(e.value).startswith("3 of 4 rows of ")
    for keep, layout in ((1, "8-bit 4:2:2"), (2, "8-bit 4:4:4")):
        df.assign(path=[("videos/h.mp4", "videos/x.mp4", "videos/v.webm")[keep], *df["path"][1:]]).to_csv(
            root / "train.csv", index=False)
        with pytest.raises(DatasetError, match=f"^{root / ('videos/h.mp4', 'videos/x.mp4', 'videos/v.webm')[keep]}: "
                                               f"{layout} pixels; the pyav backend reads 8-bit 4:2:0"):
            load(root, mode="val")


def test_a_frame_that_is_not_yuv420p_is_one_named_error(tmp_path):
    """A file whose frames change format after the first (the index records the first frame's layout): VP9 at
    4:2:0 for 16 frames, then a 4:4:4 keyframe (profile 1). The clip that reaches frame 16 stops the epoch with
    one line naming the file, the frames and what the frame is."""
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}]})
    victim = root / pd.read_csv(root / "train.csv")["path"][0]
    head = encode(tmp_path / "a.webm", "libvpx-vp9", "yuv420p", 16, {"g": "16", "lossless": "1"})
    tail = encode(tmp_path / "b.webm", "libvpx-vp9", "yuv444p", 4, {"g": "16", "lossless": "1"})
    write_ivf(victim, head + tail, 96, 64)
    with load(root, mode="val", batch_size=1) as loader:
        assert loader.packets.chroma.tolist() == [CHROMA_420] and loader.plan.frames[0].tolist() == list(range(2, 18))
        with pytest.raises(DatasetError) as e:
            list(loader)
    assert str(e.value) == (f"{victim}: frames 2..17: frame 16 is yuv444p 96x64 where the index says yuv420p 96x64. "
                            f"{HINT}")


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
