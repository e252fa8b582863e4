"""The built-in synthetic dataset: deterministic, right counts, broken files rejected by prepare_data.py."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

import prepare_data
from prepare.sample import BROKEN, CLASSES, render_clip


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


ROOT = Path(__file__).resolve().parent.parent


def test_sample_is_deterministic_and_has_the_requested_counts(tmp_path):
    # Two generations in fresh processes whose heaps start differently (glibc fills freed and new blocks with
    # MALLOC_PERTURB_'s byte): an encoder reading uninitialised memory (x264's MB-tree with B-frames did) makes
    # the bytes differ here, as they did between machines.
    for name, perturb in (("a", "165"), ("b", "77")):
        cmd = [sys.executable, "prepare_data.py", "--make-sample", str(tmp_path / name), "--seed", "3",
               "--sample-train", "2", "--sample-val", "1", "--workers", "1"]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env={**os.environ, "MALLOC_PERTURB_": perturb})
    a, b = _digest(tmp_path / "a"), _digest(tmp_path / "b")
    assert a == b  # same seed, same bytes
    for split, per_class in (("train", 2), ("val", 1)):
        for label in CLASSES:
            files = [p for p in (tmp_path / "a" / split / label).iterdir() if not p.name.startswith("broken")]
            assert len(files) == per_class
    assert {f"train/{k}" for k in BROKEN} <= set(a)
    suffixes = {Path(k).suffix for k in a}
    assert suffixes == {".mp4", ".avi", ".webm"}

    # preparing it rejects exactly the broken files and keeps every other video
    dst = tmp_path / "prepared"
    assert prepare_data.main([str(tmp_path / "a"), "--out", str(dst), "--height", "32", "--workers", "1"]) == 0
    rejected = pd.read_csv(dst / "rejected.csv")
    assert sorted(Path(s).name for s in rejected["source"]) == sorted(Path(k).name for k in BROKEN)
    report = json.loads((dst / "prepare_report.json").read_text())
    assert report["rows"] == {"train": 12, "val": 6}
    assert pd.read_csv(dst / "classes.csv")["name"].tolist() == list(CLASSES)


def test_bad_sample_arguments_are_usage_errors(tmp_path):
    for bad in (["--seed", "-1"], ["--sample-train", "-2"], ["--workers", "0"]):
        with pytest.raises(SystemExit) as e:
            prepare_data.main(["--make-sample", str(tmp_path / "raw"), *bad])
        assert e.value.code == 2
    assert not (tmp_path / "raw").exists()


def test_another_seed_gives_other_videos(tmp_path):
    rng0, rng1 = np.random.default_rng(0), np.random.default_rng(1)
    assert not np.array_equal(render_clip("grow", rng0, 64, 48, 8), render_clip("grow", rng1, 64, 48, 8))


def test_files_vary_in_size_rate_and_length(tmp_path):
    prepare_data.main(["--make-sample", str(tmp_path), "--sample-train", "4", "--sample-val", "0", "--workers", "1"])
    sizes, rates, lengths = set(), set(), []
    for p in sorted((tmp_path / "train").rglob("*_0*")):
        with av.open(str(p)) as c:
            vs = c.streams.video[0]
            sizes.add((vs.codec_context.width, vs.codec_context.height))
            rates.add(float(vs.average_rate))
            lengths.append(sum(1 for _ in c.decode(vs)))
    assert len(sizes) >= 3 and len(rates) >= 2 and min(lengths) >= 12 and max(lengths) <= 48

