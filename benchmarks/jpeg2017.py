"""The 2017 reference loader, for benchmarks/loader_speed.py: JPEG frames + PIL + a torch DataLoader, as
3D-ResNets-PyTorch does it (its generate_video_jpgs.py, datasets/loader.py, datasets/videodataset.py,
spatial_transforms.py, main.py), with this project's sampling (pipeline/sampling.py) so it makes the same clips.

Storage (extract_jpegs): `ffmpeg -i VIDEO -vf scale=-1:HEIGHT -threads 1 image_%05d.jpg` (their
generate_video_jpgs.py; `scale=HEIGHT:-1` when the video is not wider than high) done with PyAV, which has
FFmpeg's encoders but no command line. Which frames that command writes: the image2 muxer's flags lack
AVFMT_VARIABLE_FPS (libavformat/img2enc.c), so with no -vsync/-fps_mode ffmpeg picks constant-rate output
(fftools/ffmpeg_mux_init.c: VSYNC_AUTO -> VSYNC_CFR, VSYNC_VSCFR for a one-stream input) at the input stream's
guessed rate (av_guess_frame_rate: the buffersink's frame rate, fftools/ffmpeg_filter.c choose_out_timebase),
duplicating and dropping frames to fill every output slot (video_sync_process); hence the usual advice to pass
`-vsync 0` to avoid duplicates. pipeline/video.py's Retimer is that rule (pick_rate is the same guessed rate;
prepare_data.py's outputs use it too), so a source whose frames are missing or variably timed gets as many JPEGs
as the prepared video has frames: OpenCV's tree.avi decodes 68 frames over 29.6 s at a declared 15 fps and
gets 444 JPEGs, as ffmpeg writes. Each decoded frame is scaled, before the rate conversion as in ffmpeg's
filter graph, to HEIGHT on the short side (the other side as scale=-1 computes it: av_rescale, rounded to
nearest) with swscale's bicubic (the scale filter's default), to yuvj420p (what ffmpeg picks for mjpeg), and
each output frame encoded by one mjpeg encoder at FFmpeg's defaults (no -q:v: rate control at the
default 200 kb/s over a 1/fps time base; a duplicated frame is encoded again, as ffmpeg does), each packet
written as one image_%05d.jpg, which is what the image2 muxer does.

Per clip (JpegClips.__getitem__, in a DataLoader worker): for each of the T frame indices, a stat of the file
(their VideoLoader checks image_path.exists()), PIL open + convert('RGB'); then per frame their spatial
transforms: the crop of MultiScaleCornerCrop (img.crop of the plan's box), Resize(112) (PIL bilinear),
RandomHorizontalFlip (the plan's flip), ToTensor (/255), ScaleValue(255), Normalize(mean, std); then
torch.stack(frames).permute(1, 0, 2, 3). Batches by the DataLoader's default collate in its workers
(num_workers = threads, the default prefetch_factor 2 and fork, a new iterator each epoch as their training
loop makes; pin_memory is left out: it needs CUDA).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def jpeg_dir(root: Path, rel: str) -> Path:
    """Where the JPEG frames of the video at manifest path `rel` live under the JPEG root."""
    return root / Path(rel).with_suffix("")


EXTRACTION = "cfr"  # the rule a folder's `done` marker names (folders extracted before the retiming named none)


def scaled_size(width: int, height: int, short: int) -> tuple[int, int]:
    """(width, height) of their scale filter: `scale=-1:SHORT` for a video wider than high, else `scale=SHORT:-1`;
    the -1 side as libavfilter computes it (av_rescale: rounded to nearest, halves up)."""
    if width > height:
        return (short * width + height // 2) // height, short
    return short, (short * height + width // 2) // width


def extract_jpegs(video: str | Path, out: Path, height: int) -> int:
    """Write `video`'s frames as ffmpeg's image2 output would be (module docstring) into out/image_%05d.jpg (from
    1), the short side `height` px; returns the number of JPEGs. Idempotent: a folder whose `done` marker names
    EXTRACTION is kept; one from an older rule is extracted again."""
    import av
    from av.video.reformatter import VideoReformatter

    from pipeline.video import Retimer, open_source, pick_rate

    out = Path(out)
    done = out / "done"
    if done.is_file():
        count, *rule = done.read_text().split()
        if rule == [EXTRACTION]:
            return int(count)
        for old in out.glob("image_*.jpg"):
            old.unlink()
        done.unlink()
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with open_source(video, decode_threads=1) as (container, stream):
        rate, _ = pick_rate(stream)  # ffmpeg's output rate: the input's guessed rate
        enc, scaler, k = None, VideoReformatter(), 0
        for frame, count in Retimer(container, stream, rate):  # count: output slots this frame fills (0: dropped)
            if enc is None:
                enc = av.CodecContext.create("mjpeg", "w")
                enc.width, enc.height = scaled_size(frame.width, frame.height, height)
                enc.pix_fmt = "yuvj420p"
                enc.time_base, enc.framerate, enc.thread_count = 1 / rate, rate, 1
            if count == 0:
                continue
            img = scaler.reformat(frame, width=enc.width, height=enc.height, format="yuvj420p",
                                  interpolation="BICUBIC")
            for _ in range(count):  # each output slot encoded, duplicates too: the encoder's rate control sees them
                img.pts, img.time_base, k = k, enc.time_base, k + 1  # output frame k at k/fps
                for packet in enc.encode(img):
                    n += 1
                    (out / f"image_{n:05d}.jpg").write_bytes(bytes(packet))
        for packet in enc.encode(None) if enc is not None else ():
            n += 1
            (out / f"image_{n:05d}.jpg").write_bytes(bytes(packet))
    done.write_text(f"{n} {EXTRACTION}\n")
    return n


def folder_bytes(root: Path, suffix: str) -> int:
    """Total size of the files under root whose name ends with suffix."""
    return sum(p.stat().st_size for p in Path(root).rglob(f"*{suffix}"))


class JpegClips:
    """A torch Dataset of one epoch's clips (a pipeline.sampling.Plan) read the authors' way (module docstring).
    dirs: per manifest row its JPEG folder; frames in the plan are 0-based, files 1-based."""

    def __init__(self, dirs: list[Path], labels: np.ndarray, size: int, mean, std):
        self.dirs, self.labels, self.size = dirs, labels, size
        self.mean, self.std = mean, std
        self.plan = None

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int):
        import torch
        from PIL import Image

        row, frames = int(self.plan.rows[k]), self.plan.frames[k]
        x0, y0, side = (int(v) for v in self.plan.boxes[k])
        flip = bool(self.plan.flips[k])
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        clip = []
        for i in frames.tolist():
            path = self.dirs[row] / f"image_{i + 1:05d}.jpg"
            if not path.exists():  # their VideoLoader skips missing frames; the plan never names one
                continue
            with path.open("rb") as f, Image.open(f) as im:
                img = im.convert("RGB")
            img = img.crop((x0, y0, x0 + side, y0 + side))  # MultiScaleCornerCrop
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)  # Resize(sample_size)
            if flip:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)  # RandomHorizontalFlip
            t = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous().float().div(255)  # ToTensor
            t = t * 255.0  # ScaleValue(value_scale 255: the 2017 release's 0-255 pixels)
            clip.append(t.sub_(mean).div_(std))  # Normalize
        return torch.stack(clip, 0).permute(1, 0, 2, 3), int(self.labels[row])


class JpegLoader:
    """set_epoch + iteration like a pipeline loader, for loader_speed.timed_runs: a DataLoader per epoch over
    JpegClips. base: a LoaderBase over the prepared dataset of the same videos and split (its rows, labels and
    config); the clips come from pipeline.sampling.plan_epoch with the same seed and rule over the JPEG
    folders' own frame counts and sizes (the counts equal the prepared videos': both are retimed by
    pipeline/video.py's Retimer)."""

    def __init__(self, base, jpeg_root: Path, batch_size: int, workers: int, size: int, mean=(110.63666788,
                 103.16065604, 96.29023126), std=(1.0, 1.0, 1.0)):
        from PIL import Image

        self.base, self.batch_size, self.workers, self.epoch = base, batch_size, workers, 0
        self.dirs = [jpeg_dir(jpeg_root, p) for p in base.videos["path"]]
        self.counts = np.array([int((d / "done").read_text().split()[0]) for d in self.dirs], np.int64)
        sizes = []
        for d in self.dirs:
            with Image.open(d / "image_00001.jpg") as im:
                sizes.append(im.size)
        self.widths, self.heights = (np.array(v, np.int64) for v in zip(*sizes, strict=True))
        self.dataset = JpegClips(self.dirs, base.labels, size, mean, std)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def plan(self):
        from pipeline.sampling import plan_epoch

        c = self.base.config
        return plan_epoch(self.counts, self.widths, self.heights, mode=c.mode, epoch=self.epoch, seed=c.seed,
                          batch=c.batch_size, length=c.sample_duration)

    def __iter__(self):
        from types import SimpleNamespace

        import torch

        self.dataset.plan = self.plan()
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False,
                                             num_workers=self.workers,
                                             multiprocessing_context="fork" if self.workers else None)
        for clips, labels in loader:
            yield SimpleNamespace(clips=clips, labels=labels)
