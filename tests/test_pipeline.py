"""The loaders end to end on CPU: decoded frame indices, crop boxes, flips, normalisation (every backend, every
preset), multi-view mode, layout, sharding, determinism, DALI vs decord agreement, lifecycle (close, threads,
worker processes) and bad-input errors.
Test videos: tests/videos.py. The packet index and its cache alone: tests/test_packets.py."""

import dataclasses
import gc
import multiprocessing
import os
import shutil

import numpy as np
import pandas as pd
import pytest
from videos import decode_code, make_dataset, write_video

from pipeline import DatasetError, build_loader
from pipeline.manifest import COLUMNS
from pipeline.normalisation import PRESETS, Normalisation
from pipeline.sampling import eval_starts

T, S, W, H = 16, 24, 96, 64
BACKENDS = ["dali", "decord", "pyav"]
ZERO = (0.0, 0.0, 0.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """train: 12 files (lengths incl. < T, == T, mid-GOP ends); val: segments of an untrimmed file + a short file."""
    root = tmp_path_factory.mktemp("prepared")
    lengths = [40, 10, 100, 33, 17, 64, 50, 16, 81, 23, 70, 29]
    return make_dataset(root, {
        "train": [{"frames": n} for n in lengths],
        "val": [{"frames": 90, "segments": [(0, 20), (20, 57), (57, 90)], "label": 1}, {"frames": 7, "label": 2}],
    })  # fmt: skip


def load(data, split="train", mode="train", backend="dali", **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("sample_size", S)
    kw.setdefault("normalisation", Normalisation(ZERO))
    if backend == "nvdec":  # on the CPU: the NVDEC loader with its CPU twin decoder (tests/test_nvdec.py)
        from pipeline.backends.nvdec import NvdecLoader
        from pipeline.base import LoaderConfig

        config = LoaderConfig(data=data, split=split, mode=mode, backend=backend, progress=False, **kw)
        return NvdecLoader(config, decoder="pyav")
    return build_loader(data, split=split, mode=mode, backend=backend, progress=False, **kw)


def epoch(loader):
    out = [tuple(x.cpu().numpy() for x in b) for b in loader]
    return tuple(np.concatenate(z) for z in zip(*out, strict=True))


def check_clip_content(clip, frames, box, flip):
    """clip: (3, T, S, S) float32 with mean 0; checks frame indices, crop box centre and flip."""
    r, g, b = clip
    np.testing.assert_array_equal(decode_code(b.mean(axis=(1, 2))), frames % 32)
    x0, y0, side = box
    # Linear gradients: the mean over a resized box is the gradient at the box centre.
    assert abs(r.mean() - 255 * (x0 + side / 2 - 0.5) / (W - 1)) < 3
    assert abs(g.mean() - 255 * (y0 + side / 2 - 0.5) / (H - 1)) < 3
    slope = (r[:, :, -1] - r[:, :, 0]).mean()
    assert (slope < 0) == bool(flip) and abs(slope) > 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_epoch_layout_frames_boxes_flips(data, backend):
    loader = load(data, backend=backend)
    assert len(loader) == 3 and loader.num_clips == 12
    assert loader.class_names == ["a", "b", "c"]
    batches = list(loader)
    assert len(batches) == 3
    clips, labels, vidx = batches[0]
    assert clips.shape == (4, 3, T, S, S) and str(clips.dtype) == "torch.float32"
    assert str(labels.dtype) == str(vidx.dtype) == "torch.int64"
    clips, labels, vidx = epoch(loader)
    plan = loader.plan
    np.testing.assert_array_equal(vidx, plan.rows)
    np.testing.assert_array_equal(labels, loader.videos["label"].to_numpy()[plan.rows])
    for k in range(len(clips)):
        check_clip_content(clips[k], plan.frames[k], plan.boxes[k], plan.flips[k])


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_windows_segments_and_short_videos(data, backend):
    loader = load(data, "val", "eval", backend=backend, batch_size=3)
    clips, labels, vidx = epoch(loader)
    n = [20, 37, 33, 7]
    starts_frame = [0, 20, 57, 0]
    expected = [(r, s) for r in range(4) for s in eval_starts(n[r], T)]
    assert len(clips) == len(expected) == len(loader.plan) == 1 + 2 + 2 + 1
    assert len(loader) == 2
    np.testing.assert_array_equal(vidx, [r for r, _ in expected])
    np.testing.assert_array_equal(labels, [1, 1, 1, 1, 1, 2])
    for k, (r, s) in enumerate(expected):
        frames = starts_frame[r] + (s + np.arange(T)) % n[r]
        check_clip_content(clips[k], frames, (16, 0, 64), False)  # centre crop at max scale


def test_val_mode_centre_clip(data):
    loader = load(data, "val", "val")
    clips, _, vidx = epoch(loader)
    np.testing.assert_array_equal(vidx, [0, 1, 2, 3])
    for k, (a, n) in enumerate([(0, 20), (20, 37), (57, 33), (0, 7)]):
        check_clip_content(clips[k], a + (max((n - T) // 2, 0) + np.arange(T)) % n, (16, 0, 64), False)


def test_mean_subtraction(data):
    """The default normalisation subtracts the Kinetics mean from 0-255 pixels, and nothing else."""
    a = epoch(load(data, "val", "val", normalisation=Normalisation(ZERO)))[0]
    b = epoch(load(data, "val", "val", normalisation=PRESETS["kinetics"]))[0]
    mean = PRESETS["kinetics"].mean
    np.testing.assert_allclose(a - b, np.broadcast_to(np.array(mean, np.float32).reshape(1, 3, 1, 1, 1), a.shape),
                               atol=1e-4)


@pytest.fixture(scope="module")
def data128(tmp_path_factory):
    """128x128 frames: the smallest VP9 frame NVDEC (and so the nvdec backend's CPU twin) accepts."""
    return make_dataset(tmp_path_factory.mktemp("prepared128"), {"val": [{"frames": 20}, {"frames": 7}]},
                        width=128, height=128)


@pytest.mark.parametrize("backend", ["dali", "decord", "nvdec", "pyav"])
@pytest.mark.parametrize("name", ["kinetics-0-1", "activitynet"])
def test_every_backend_applies_the_normalisation(data128, backend, name):
    """(p * value_scale / 255 - mean) / std of the pixels each backend delivers without normalisation (DALI's
    crop_mirror_normalize, augment.py for decord and nvdec)."""
    from pipeline.normalisation import PRESETS

    norm = PRESETS[name]
    raw = epoch(load(data128, "val", "eval", backend=backend, normalisation=Normalisation(ZERO)))[0]
    got = epoch(load(data128, "val", "eval", backend=backend, normalisation=norm))[0]
    mean, std = (np.array(v).reshape(1, 3, 1, 1, 1) for v in (norm.mean, norm.std))
    np.testing.assert_allclose(got, (raw.astype(np.float64) * norm.value_scale / 255 - mean) / std, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_views_mode_delivers_every_view(data, backend):
    """mode="views", clips=3, crops=3: 3 starts x 3 crops (96x64: x0 = 0, 16, 32) per row, clip-major."""
    from pipeline.sampling import view_starts

    loader = load(data, "val", "views", backend=backend, batch_size=4, clips=3, crops=3)
    clips, _, vidx = epoch(loader)
    n, offset = [20, 37, 33, 7], [0, 20, 57, 0]
    assert len(clips) == len(loader.plan) == 4 * 9 and len(loader) == 9
    np.testing.assert_array_equal(vidx, np.repeat(np.arange(4), 9))
    for k in range(len(clips)):
        r, s, j = k // 9, view_starts(n[k // 9], T, 3)[k % 9 // 3], k % 3
        check_clip_content(clips[k], offset[r] + (s + np.arange(T)) % n[r], (16 * j, 0, 64), False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlabelled_rows_load_in_the_evaluation_modes_only(small, backend):
    """Label -1 (no ground truth, e.g. Kinetics' test split): eval and views modes load it (labels -1 in the
    batches), train and val refuse it (they need a label for the loss)."""
    m = small / "train.csv"
    pd.read_csv(m).assign(label=[-1, 0, -1, 2]).to_csv(m, index=False)
    for mode, kw in [("eval", {}), ("views", {"clips": 2, "crops": 3})]:
        _, labels, vidx = epoch(load(small, mode=mode, backend=backend, **kw))
        np.testing.assert_array_equal(labels, np.array([-1, 0, -1, 2])[vidx])
        assert len(vidx) == ({"eval": 1 + 1 + 1 + 1, "views": 4 * 2 * 3}[mode])
    for mode in ("train", "val"):
        with pytest.raises(DatasetError, match=f"{m}: 2 row.*label outside classes.csv.*label -1"):
            load(small, mode=mode, backend=backend, batch_size=1)


def test_views_take_one_or_three_crops(data):
    with pytest.raises(ValueError, match=r"crops must be one of \(1, 3\).*got 2"):
        load(data, "val", "views", clips=3, crops=2)


def test_dali_decodes_rows_with_hidden_frames_from_the_whole_file(tmp_path, capsys):
    """A VP9 IVF whose hidden frames sit in packets of their own (packet k is not frame k after the first): the
    GOP slices would give the wrong frames, so DALI gets that row's whole file, and every clip shows its planned
    frames; the same frames packed in superframes (one shown frame per packet) still go as GOP slices."""
    from videos import write_hidden_frame_ivf

    root = tmp_path / "ds"
    rows = []
    for i, packed in enumerate([False, True]):
        rel = f"videos/val/a/v{i}.ivf"
        write_hidden_frame_ivf(root / rel, 40, hide=[8, 24], packed=packed, width=W, height=H)
        rows.append([f"v{i}", rel, 0, "a", "val", 40, 25.0, W, H, 0, 40])
    pd.DataFrame({"index": [0], "name": ["a"]}).to_csv(root / "classes.csv", index=False)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(root / "val.csv", index=False)
    with load(root, "val", "eval", batch_size=3) as loader:
        assert loader.whole_file_rows == 1 and list(loader._feed.ivf) == [False, True]
        out = capsys.readouterr().out
        assert "1 of 2 row(s) have packets that do not show exactly one frame" in out and "v0.ivf" in out
        clips, _, vidx = epoch(loader)
        plan = loader.plan
    assert list(vidx) == [0, 0, 1, 1]  # windows 0 and 16 of each
    for k in range(len(clips)):
        np.testing.assert_array_equal(decode_code(clips[k][2].mean(axis=(1, 2))), plan.frames[k] % 32)


def psnr(a, b):
    return 10 * np.log10(255**2 / np.mean((a.astype(np.float64) - b) ** 2))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("other", ["decord", "pyav"])
def test_dali_matches_decord_and_pyav(data, mode, other):
    """Same seed and epoch: the same clips (rows, labels; frames, boxes and flips are checked per backend above)
    and pixels within 40 dB."""
    split = "train" if mode == "train" else "val"
    a = epoch(load(data, split, mode, backend="dali", normalisation=PRESETS["kinetics"]))
    b = epoch(load(data, split, mode, backend=other, normalisation=PRESETS["kinetics"]))
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    for x, y in zip(a[0], b[0], strict=True):
        assert psnr(x, y) >= 40


def test_gop_slice_equals_whole_file(data):
    a = epoch(load(data, dali_input="gop"))[0]
    b = epoch(load(data, dali_input="file"))[0]
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_determinism_and_set_epoch(data, backend):
    a, b = load(data, backend=backend, seed=5), load(data, backend=backend, seed=5)
    ea, eb = epoch(a), epoch(b)
    for x, y in zip(ea, eb, strict=True):
        np.testing.assert_array_equal(x, y)
    a.set_epoch(1)
    e1 = epoch(a)
    assert not np.array_equal(ea[2], e1[2])
    a.set_epoch(0)
    np.testing.assert_array_equal(epoch(a)[0], ea[0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_abandoned_epoch_then_full_epoch(data, backend):
    loader = load(data, backend=backend, batch_size=2)
    full = epoch(loader)
    for _ in loader:  # break after one step: the prefetched batches must not leak into the next epoch
        break
    again = epoch(loader)
    for x, y in zip(full, again, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("world", [2, 3])
def test_loader_sharding(data, world):
    train = [load(data, rank=r, world_size=world, batch_size=2) for r in range(world)]
    assert len({len(t) for t in train}) == 1 and len(train[0]) == (12 // world) // 2
    rows = np.concatenate([epoch(t)[2] for t in train])
    assert len(set(rows.tolist())) == len(rows)
    ev = [load(data, "val", "eval", rank=r, world_size=world, batch_size=2) for r in range(world)]
    rows = np.concatenate([epoch(e)[2] for e in ev])
    np.testing.assert_array_equal(np.sort(rows), [0, 1, 1, 2, 2, 3])
    assert sum(e.num_clips for e in ev) == 6


# ---- bad input ---------------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    return make_dataset(tmp_path / "ds", {"train": [{"frames": n} for n in (20, 30, 18, 25)]})


def test_missing_file_is_named_or_skipped(small, capsys):
    victim = small / pd.read_csv(small / "train.csv")["path"][1]
    os.remove(victim)
    with pytest.raises(DatasetError, match=f"{victim}: file not found.*prepare_data.py"):
        load(small)
    loader = load(small, batch_size=1, skip_bad=True)
    assert "skipping 1 bad row(s) of 4" in capsys.readouterr().out
    assert loader.skipped == 1 and len(loader.videos) == 3 and len(loader) == 3
    assert epoch(loader)[0].shape == (3, 3, T, S, S)
    other_rank = load(small, batch_size=1, skip_bad=True, rank=1, world_size=3)
    assert other_rank.skipped == 1 and capsys.readouterr().out == ""  # said once, by rank 0


def test_backend_problems_follow_the_bad_row_policy(small):
    """A backend's pure problems(config, packets) says which rows it cannot decode and why; LoaderBase fails naming
    the file or skips them."""
    from pipeline.base import LoaderBase, LoaderConfig

    def too_long(config, packets):
        out = np.full(len(packets), "", object)
        out[packets.count > 25] = "too long for this backend"
        return out

    cfg = LoaderConfig(data=small, split="train", mode="val", backend="decord", batch_size=1, sample_size=S,
                       progress=False)
    victim = small / pd.read_csv(small / "train.csv")["path"][1]  # the 30-frame file
    with pytest.raises(DatasetError, match=f"{victim}: too long for this backend.*or pass skip_bad=True"):
        LoaderBase(cfg, too_long)
    with LoaderBase(dataclasses.replace(cfg, skip_bad=True), too_long) as loader:
        assert loader.skipped == 1 and list(loader.videos["num_frames"]) == [20, 18, 25]


def test_arguments_by_name_only(small):
    with pytest.raises(TypeError):
        build_loader(small, "train", "train")  # split and mode look alike: by name only
    with pytest.raises(TypeError, match="batchsize"):
        build_loader(small, split="train", mode="train", batchsize=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        build_loader(small, split="train", mode="train", backend="opencv")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_broken_files_are_found_before_the_first_step(small, damage):
    victim = small / pd.read_csv(small / "train.csv")["path"][2]
    raw = victim.read_bytes()
    victim.write_bytes({"truncate": raw[: len(raw) // 3], "garbage": os.urandom(5000), "empty": b""}[damage])
    with pytest.raises(DatasetError, match=f"{victim}: .*prepare_data.py"):
        load(small)


def test_packet_index_is_cached(small, monkeypatch):
    load(small)
    assert (small / ".cache" / "packets-train.idx").is_file()
    import pipeline.index.build

    def fail(path):
        raise AssertionError(f"re-indexed {path}")

    monkeypatch.setattr(pipeline.index.build, "index_file", fail)
    load(small)  # everything from the cache
    victim = small / pd.read_csv(small / "train.csv")["path"][0]
    write_video(victim, 21)  # changed file -> re-indexed
    with pytest.raises(AssertionError, match="re-indexed"):
        load(small)


def test_manifest_errors(small):
    m = small / "train.csv"
    df = pd.read_csv(m)
    df.iloc[:0].to_csv(m, index=False)
    with pytest.raises(DatasetError, match=f"{m}: manifest is empty"):
        load(small)
    df.drop(columns=["num_frames"]).to_csv(m, index=False)
    with pytest.raises(DatasetError, match=f"{m}: missing column.*num_frames"):
        load(small)
    df.assign(label=[0, 1, 3, 0]).to_csv(m, index=False)
    with pytest.raises(DatasetError, match=f"{m}: 1 row.*label outside classes.csv"):
        load(small)
    df.to_csv(m, index=False)
    with pytest.raises(DatasetError, match="val.csv: manifest not found"):
        load(small, split="val")
    os.remove(small / "classes.csv")
    with pytest.raises(DatasetError, match="classes.csv: class list not found"):
        load(small)
    shutil.rmtree(small)
    with pytest.raises(DatasetError, match="dataset folder not found"):
        load(small)


def test_too_few_videos_for_a_batch(small):
    with pytest.raises(DatasetError, match="no full batch"):
        load(small, batch_size=3, world_size=2)


def test_h264_file_needs_gpu_or_decord(tmp_path):
    root = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}]})
    df = pd.read_csv(root / "train.csv")
    mp4 = root / "videos" / "train" / "a" / "h.mp4"
    write_video(mp4, 20, codec="libx264")
    df.assign(path=str(mp4.relative_to(root))).to_csv(root / "train.csv", index=False)
    with pytest.raises(DatasetError, match="codec h264 cannot be decoded by DALI on CPU.*decord"):
        load(root, batch_size=1)
    clips, _, _ = epoch(load(root, backend="decord", batch_size=1, mode="val"))
    assert clips.shape == (1, 3, T, S, S)


@pytest.fixture(scope="module")
def gpu_data(tmp_path_factory):
    """Like `data` at 192x144: NVDEC decodes no VP9 frame below 128x128 ("Video is too small ... 96x64")."""
    root = tmp_path_factory.mktemp("prepared_gpu")
    return make_dataset(root, {"train": [{"frames": n} for n in [40, 10, 100, 33, 17, 64, 50, 16]]},
                        width=192, height=144)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_device_matches_cpu(gpu_data, backend):
    cpu = epoch(load(gpu_data, backend=backend))
    loader = load(gpu_data, backend=backend, device="gpu", device_id=0)
    clips, labels, vidx = next(iter(loader))
    assert clips.is_cuda and clips.shape == (4, 3, T, S, S)
    gpu = epoch(loader)
    np.testing.assert_array_equal(cpu[2], gpu[2])
    for x, y in zip(cpu[0], gpu[0], strict=True):
        assert psnr(x, y) >= 40


@pytest.mark.gpu
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_device_applies_the_normalisation(gpu_data, backend):
    """The GPU graph (DALI's crop_mirror_normalize on the GPU; decord's batch moved there) normalises as the CPU
    does: with the authors' 0-1 mean and std, mapped back to pixels, the same clips (>= 40 dB, the decoders')."""
    from pipeline.normalisation import PRESETS

    mean, std = (np.array(v).reshape(1, 3, 1, 1, 1) for v in PRESETS["kinetics-0-1"].on_pixels())
    kw = dict(backend=backend, normalisation=PRESETS["kinetics-0-1"])
    cpu = epoch(load(gpu_data, "train", "val", **kw))[0] * std + mean
    gpu = epoch(load(gpu_data, "train", "val", device="gpu", device_id=0, **kw))[0] * std + mean
    assert -1 < cpu.min() and cpu.max() < 256
    for x, y in zip(cpu, gpu, strict=True):
        assert psnr(x, y) >= 40


# ---- lifecycle: close(), with, threads and worker processes ------------------------------------------------


def threads() -> int:
    """Threads of this process, Python's and native ones (DALI's)."""
    return len(os.listdir("/proc/self/task"))


def test_dali_close_joins_its_threads(data):
    epoch(load(data, "val", "val"))  # warm-up: thread pools that outlive a loader (torch's) start here
    before = threads()
    loader = load(data, "val", "val")
    first = epoch(loader)
    assert threads() > before  # the pipeline's worker threads
    loader.close()
    assert threads() == before and loader.closed
    loader.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        next(iter(loader))
    assert len(loader) == 1 and len(loader.videos) == 4  # the plan and the manifest stay usable
    with load(data, "val", "val") as loader:
        np.testing.assert_array_equal(epoch(loader)[0], first[0])
        assert threads() > before
    assert threads() == before


def test_close_in_the_middle_of_an_epoch(data):
    epoch(load(data, "val", "val"))
    before = threads()
    loader = load(data, "val", "val", batch_size=1)
    batches = iter(loader)
    next(batches)  # the pipeline has prefetched more
    loader.close()
    assert threads() == before
    with pytest.raises(RuntimeError, match="closed"):
        next(batches)


@pytest.mark.parametrize("workers", [0, 2])
def test_decord_close_in_the_middle_of_an_epoch(data, workers):
    """The suspended epoch says "closed": it neither ends early (workers gone) nor goes on (no workers)."""
    loader = load(data, "val", "val", backend="decord", batch_size=1, workers=workers)
    batches = iter(loader)
    next(batches)
    loader.close()
    assert multiprocessing.active_children() == []
    with pytest.raises(RuntimeError, match="closed"):
        next(batches)


def test_dropped_loaders_free_threads_and_workers_without_gc(data):
    """No reference cycle: the last reference going (no close(), no gc) frees DALI's threads and decord's workers,
    also with an epoch abandoned half-way. So tests need no gc.collect() between them."""
    epoch(load(data, "val", "val"))
    before = threads()
    gc.disable()
    try:
        for backend in BACKENDS:
            loader = load(data, backend=backend, batch_size=2, workers=2)
            for _ in loader:
                break
            assert threads() > before or multiprocessing.active_children()
            del loader
            assert multiprocessing.active_children() == [], backend
            if backend == "dali":  # (decord's queue feeder threads end asynchronously after its workers)
                assert threads() == before
    finally:
        gc.enable()


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_decord_workers_persist_across_epochs_and_see_each_plan(data):
    with load(data, backend="decord", batch_size=2, workers=2) as loader:
        first = epoch(loader)
        workers = {p.pid for p in multiprocessing.active_children()}
        assert len(workers) == 2
        assert all(_parent_of(pid) != os.getpid() for pid in workers)  # forkserver's children: no fork of pytest
        loader.set_epoch(1)
        second = epoch(loader)
        assert {p.pid for p in multiprocessing.active_children()} == workers  # the same workers
        np.testing.assert_array_equal(second[2], loader.plan.rows)  # ... that got epoch 1's plan
        assert not np.array_equal(first[2], second[2])
        for k in range(len(second[0])):
            check_clip_content(second[0][k], loader.plan.frames[k], loader.plan.boxes[k], loader.plan.flips[k])
    assert multiprocessing.active_children() == []
