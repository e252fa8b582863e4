"""prepare_data.py on tiny copies of UCF101 and HMDB51 as distributed: the official file names and split-file
formats, a video listed but missing, a video present but unlisted, exact manifests for the three splits."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console
from test_prepare import make_video, read_manifest, rows

import prepare_data
from prepare import layouts

# UCF101 ------------------------------------------------------------------------------------------------------------
# Four classes whose classInd.txt order (the official numbers' order) is not Python's sorted order: "HammerThrow"
# sorts before "Hammering" ('T' < 'i'), but classInd.txt numbers Hammering 35 and HammerThrow 36. HandstandPushups'
# videos keep UCF101's capital S in their file names (v_HandStandPushups_...), its folder and classInd.txt do not.
UCF_CLASSES = ["Haircut", "Hammering", "HammerThrow", "HandstandPushups"]
# video file (under UCF-101/) -> frames; splits 1/2/3 hold out groups 1-7, 8-14 and 15-21 as the official lists do
UCF_VIDEOS = {
    "Haircut/v_Haircut_g01_c01.avi": 20,
    "Haircut/v_Haircut_g08_c01.avi": 21,
    "Hammering/v_Hammering_g08_c02.avi": 22,
    "HammerThrow/v_HammerThrow_g15_c02.avi": 23,
    "HandstandPushups/v_HandStandPushups_g01_c01.avi": 24,
    "HandstandPushups/v_HandStandPushups_g15_c04.avi": 25,
    "Haircut/v_Haircut_g26_c01.avi": 26,  # present, in no list: reported
}
UCF_MISSING = "Hammering/v_Hammering_g01_c03.avi"  # listed (test1, train2, train3), absent: reported


def ucf_lists(group: int) -> list[str]:
    """The manifests of the listed videos of a group, as the official lists put them."""
    return {1: ["test1", "train2", "train3"], 8: ["train1", "test2", "train3"], 15: ["train1", "train2", "test3"]}[group]


@pytest.fixture(scope="module")
def ucf101(tmp_path_factory) -> Path:
    """SRC/UCF-101/<Class>/<video>.avi (MPEG-4 AVI like the originals) + SRC/ucfTrainTestlist/ (CRLF, as shipped)."""
    src = tmp_path_factory.mktemp("ucf") / "UCF101"
    for rel, n in UCF_VIDEOS.items():
        make_video(src / "UCF-101" / rel, n)
    lists = src / "ucfTrainTestlist"
    lists.mkdir()
    crlf = "\r\n"
    (lists / "classInd.txt").write_text("".join(f"{i} {c}{crlf}" for i, c in enumerate(UCF_CLASSES, 1)),
                                        newline="")
    listed = [r for r in UCF_VIDEOS if "g26" not in r] + [UCF_MISSING]
    for k in (1, 2, 3):
        train = [r for r in listed if f"train{k}" in ucf_lists(int(r.split("_g")[1][:2]))]
        test = [r for r in listed if f"test{k}" in ucf_lists(int(r.split("_g")[1][:2]))]
        (lists / f"trainlist0{k}.txt").write_text(
            "".join(f"{r} {UCF_CLASSES.index(r.split('/')[0]) + 1}{crlf}" for r in sorted(train)), newline="")
        (lists / f"testlist0{k}.txt").write_text("".join(f"{r}{crlf}" for r in sorted(test)), newline="")
    return src


def ucf_row(rel: str, split: str) -> tuple:
    cls, name = rel.split("/")
    vid, n = name.removesuffix(".avi"), UCF_VIDEOS[rel]
    return (vid, f"videos/{cls}/{vid}.webm", UCF_CLASSES.index(cls), cls, split, n, 25.0, 42, 32, 0, n)


def prepare(src: Path, dst: Path, *extra: str) -> int:
    return prepare_data.main([str(src), "--out", str(dst), "--height", "32", "--workers", "1", *extra])


@pytest.fixture
def wide(monkeypatch):
    """prepare_data.py's messages unwrapped, one line each."""
    console = Console(width=1000)
    monkeypatch.setattr(prepare_data, "console", lambda: console)


def test_ucf101_is_detected(ucf101):
    assert layouts.detect_layout(ucf101) == "ucf101"


def test_ucf101_three_splits_exact_manifests_each_video_once(ucf101, tmp_path):
    dst = tmp_path / "dst"
    assert prepare(ucf101, dst) == 0
    a, b = "Haircut/v_Haircut_g01_c01.avi", "Haircut/v_Haircut_g08_c01.avi"
    hammering, throw = "Hammering/v_Hammering_g08_c02.avi", "HammerThrow/v_HammerThrow_g15_c02.avi"
    hs1, hs15 = "HandstandPushups/v_HandStandPushups_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g15_c04.avi"
    expected = {
        "train1": [b, throw, hammering, hs15], "test1": [a, hs1],
        "train2": [a, throw, hs1, hs15], "test2": [b, hammering],
        "train3": [a, b, hammering, hs1], "test3": [throw, hs15],
    }
    for split, rels in expected.items():
        assert rows(read_manifest(dst, split)) == [ucf_row(r, split) for r in rels], split
    assert sorted(p.name for p in dst.glob("*.csv")) == [
        "classes.csv", "rejected.csv", "test1.csv", "test2.csv", "test3.csv", "train1.csv", "train2.csv", "train3.csv"]
    # classInd.txt's order, 0-based: not sorted(UCF_CLASSES)
    assert rows(pd.read_csv(dst / "classes.csv")) == [(0, "Haircut"), (1, "Hammering"), (2, "HammerThrow"),
                                                      (3, "HandstandPushups")]
    assert sorted(p.relative_to(dst).as_posix() for p in (dst / "videos").rglob("*.webm")) == sorted(
        f"videos/{r.removesuffix('.avi')}.webm" for r in UCF_VIDEOS if "g26" not in r)  # each video once
    assert rows(pd.read_csv(dst / "rejected.csv")) == [
        (str(ucf101 / "UCF-101/Haircut/v_Haircut_g26_c01.avi"), "not listed in any split file of ucfTrainTestlist"),
        (f"ucfTrainTestlist:{UCF_MISSING}", f"missing: listed in testlist01.txt, trainlist02.txt, trainlist03.txt "
                                            f"but no file {UCF_MISSING} under {ucf101}"),
    ]
    r = json.loads((dst / "prepare_report.json").read_text())
    assert r["videos"] == {"listed": 8, "prepared": 6, "reused": 0, "rejected": 2}
    assert r["rows"] == {"test1": 2, "test2": 2, "test3": 2, "train1": 4, "train2": 4, "train3": 4}
    assert r["rejected_by_reason"] == {"missing": 1, "not listed in any split file of ucfTrainTestlist": 1}
    assert r["listing"] == {"split_files": "ucfTrainTestlist", "class_index": "classInd.txt's number - 1",
                            "splits": [1, 2, 3],
                            "manifests": ["train1", "test1", "train2", "test2", "train3", "test3"],
                            "not_used": {"count": 0, "why": "split files list them, but not for split(s) 1, 2, 3 "
                                                            "(not prepared)", "files": []}}


def test_ucf101_one_split_writes_its_manifests_only(ucf101, tmp_path):
    dst = tmp_path / "dst"
    assert prepare(ucf101, dst, "--split", "1") == 0
    assert sorted(p.name for p in dst.glob("*.csv")) == ["classes.csv", "rejected.csv", "test1.csv", "train1.csv"]
    assert [r[0] for r in rows(read_manifest(dst, "test1"))] == ["v_Haircut_g01_c01", "v_HandStandPushups_g01_c01"]
    # The missing video is reported for the split that lists it: only split 1's lists count now.
    rejected = dict(rows(pd.read_csv(dst / "rejected.csv")))
    assert rejected[f"ucfTrainTestlist:{UCF_MISSING}"].startswith("missing: listed in testlist01.txt but no file")


def test_ucf101_bad_split_files_are_one_line_errors(ucf101, tmp_path, capsys, wide):
    src = tmp_path / "ucf"
    (src / "ucfTrainTestlist").mkdir(parents=True)
    for f in (ucf101 / "ucfTrainTestlist").iterdir():
        (src / "ucfTrainTestlist" / f.name).write_bytes(f.read_bytes())
    lists = src / "ucfTrainTestlist"

    def error(*extra: str) -> str:
        assert prepare(src, tmp_path / "dst", *extra) == 2
        return capsys.readouterr().out

    (lists / "trainlist02.txt").write_text("Haircut/v_Haircut_g01_c01.avi 1\nYoYo/v_YoYo_g01_c01.avi 101\n")
    assert f"{lists}/trainlist02.txt:2: class 'YoYo' is not in classInd.txt" in error()
    (lists / "trainlist02.txt").write_text("Haircut/v_Haircut_g01_c01.avi 2\n")
    assert (f"{lists}/trainlist02.txt:1: Haircut/v_Haircut_g01_c01.avi says class 2, but classInd.txt numbers "
            "Haircut 1") in error()
    (lists / "trainlist02.txt").write_text("Haircut/v_Haircut_g01_c01.avi\n")
    assert f"{lists}/trainlist02.txt:1: expected '<Class>/<video>.avi <number>', got 'Haircut/v_Haircut_g01_c01.avi'" in error()
    (lists / "trainlist02.txt").unlink()
    assert f"{lists}/trainlist02.txt: not found, but testlist02.txt is" in error("--split", "1")
    (lists / "testlist02.txt").unlink()
    assert f"{lists}: no trainlist0K.txt/testlist0K.txt for split 2 (found: 1, 3). HINT: pass --split" in error(
        "--split", "1,2")
    (lists / "classInd.txt").write_text("1 Haircut\n3 Hammering\n")
    assert f"{lists}/classInd.txt:2: expected '2 <ClassName>', got '3 Hammering'" in error("--split", "1")
    for f in lists.glob("*list0*.txt"):
        f.unlink()
    (lists / "classInd.txt").write_text("1 Haircut\n")
    (lists / "testlist01.txt").write_text("Haircut/v_Haircut_g01_c01.avi\n")
    (lists / "trainlist01.txt").write_text("Haircut/v_Haircut_g01_c01.avi 1\n")
    assert (f"{lists}/testlist01.txt:1: Haircut/v_Haircut_g01_c01.avi is in both train1 and test1 of split 1"
            in error("--split", "1"))


# HMDB51 ------------------------------------------------------------------------------------------------------------
# (class folder, video file) -> (frames, codes in splits 1, 2, 3: 1 train, 2 test, 0 not used); names as HMDB51's
HMDB_VIDEOS = {
    ("brush_hair", "April_09_brush_hair_u_nm_np1_ba_goo_0.avi"): (20, "120"),
    ("brush_hair", "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi"): (21, "211"),
    ("cartwheel", "Cartwheel_(Radschlag)_cartwheel_f_cm_np1_le_med_0.avi"): (22, "112"),
    ("cartwheel", "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi"): (23, "000"),  # in no split: not used
    ("ride_bike", "Bikeride_ride_bike_f_cm_np1_ba_med_0.avi"): (24, "221"),
}
HMDB_MISSING = ("ride_bike", "Gone_ride_bike_f_cm_np1_ba_med_1.avi", "111")  # listed, absent
HMDB_UNLISTED = ("ride_bike", "extra_ride_bike_u_cm_np1_fr_med_9.avi")  # present, in no list


@pytest.fixture(scope="module")
def hmdb51(tmp_path_factory) -> Path:
    """SRC/hmdb51_org/<class>/<video>.avi (the .rar files extracted) + SRC/testTrainMulti_7030_splits/."""
    src = tmp_path_factory.mktemp("hmdb") / "HMDB51"
    for (cls, name), (n, _) in HMDB_VIDEOS.items():
        make_video(src / "hmdb51_org" / cls / name, n)
    make_video(src / "hmdb51_org" / HMDB_UNLISTED[0] / HMDB_UNLISTED[1], 10)
    lists = src / "testTrainMulti_7030_splits"
    lists.mkdir()
    entries = [(cls, name, codes) for (cls, name), (_, codes) in HMDB_VIDEOS.items()] + [HMDB_MISSING]
    for cls in ("brush_hair", "cartwheel", "ride_bike"):
        for k in (1, 2, 3):
            (lists / f"{cls}_test_split{k}.txt").write_text(
                "".join(f"{name} {codes[k - 1]} \n" for c, name, codes in entries if c == cls))  # trailing space
    return src


def hmdb_rows(split: str) -> list[tuple]:
    k, code = int(split[-1]), "1" if split.startswith("train") else "2"
    classes = ["brush_hair", "cartwheel", "ride_bike"]
    out = [(name.removesuffix(".avi"), f"videos/{cls}/{name.removesuffix('.avi')}.webm", classes.index(cls), cls,
            split, n, 25.0, 42, 32, 0, n) for (cls, name), (n, codes) in HMDB_VIDEOS.items() if codes[k - 1] == code]
    return sorted(out)


def test_hmdb51_three_splits_exact_manifests(hmdb51, tmp_path):
    assert layouts.detect_layout(hmdb51) == "hmdb51"
    dst = tmp_path / "dst"
    assert prepare(hmdb51, dst) == 0
    assert rows(read_manifest(dst, "train1")) == [
        ("April_09_brush_hair_u_nm_np1_ba_goo_0", "videos/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.webm", 0,
         "brush_hair", "train1", 20, 25.0, 42, 32, 0, 20),
        ("Cartwheel_(Radschlag)_cartwheel_f_cm_np1_le_med_0",
         "videos/cartwheel/Cartwheel_(Radschlag)_cartwheel_f_cm_np1_le_med_0.webm", 1, "cartwheel", "train1", 22, 25.0,
         42, 32, 0, 22)]
    for split in ("test1", "train2", "test2", "train3", "test3"):
        assert rows(read_manifest(dst, split)) == hmdb_rows(split), split
    assert rows(pd.read_csv(dst / "classes.csv")) == [(0, "brush_hair"), (1, "cartwheel"), (2, "ride_bike")]
    assert len(list((dst / "videos").rglob("*.webm"))) == 4  # the one used in no split is not prepared
    missing = f"{HMDB_MISSING[0]}/{HMDB_MISSING[1]}"
    assert rows(pd.read_csv(dst / "rejected.csv")) == [
        (str(hmdb51 / "hmdb51_org" / HMDB_UNLISTED[0] / HMDB_UNLISTED[1]),
         "not listed in any split file of testTrainMulti_7030_splits"),
        (f"testTrainMulti_7030_splits:{missing}", "missing: listed in ride_bike_test_split1.txt, "
         f"ride_bike_test_split2.txt, ride_bike_test_split3.txt but no file {missing} under {hmdb51}")]
    r = json.loads((dst / "prepare_report.json").read_text())
    assert r["videos"] == {"listed": 6, "prepared": 4, "reused": 0, "rejected": 2}
    assert r["listing"]["not_used"] == {
        "count": 1, "why": "split files list them, but not for split(s) 1, 2, 3 (not prepared)",
        "files": ["cartwheel/(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0.avi"]}
    assert r["listing"]["class_index"] == "class names sorted, 0-based"


def test_hmdb51_bad_code_is_a_one_line_error(tmp_path, capsys, wide):
    src = tmp_path / "h"
    (src / "splits").mkdir(parents=True)
    (src / "splits" / "kiss_test_split1.txt").write_text("a.avi 3 \n")
    assert prepare(src, tmp_path / "dst", "--format", "hmdb51", "--split", "1") == 2
    assert f"{src}/splits/kiss_test_split1.txt:1: expected '<video>.avi 0|1|2', got 'a.avi 3'\n" in capsys.readouterr().out


def test_ucf101_in_two_shards_gives_the_same_manifests(ucf101, tmp_path):
    """Shards through the merge: every split's manifest as one run writes it (a video in several manifests)."""
    single, dst = tmp_path / "single", tmp_path / "dst"
    assert prepare(ucf101, single) == 0
    assert prepare(ucf101, dst, "--shard", "0/2") == 0
    assert not (dst / "train1.csv").exists()  # shard 1/2 has not run: nothing merged yet
    assert prepare(ucf101, dst, "--shard", "1/2") == 0
    names = sorted(p.name for p in single.glob("*.csv"))
    assert sorted(p.name for p in dst.glob("*.csv")) == names
    for name in names:
        assert (dst / name).read_bytes() == (single / name).read_bytes(), name
    r, one = (json.loads((d / "prepare_report.json").read_text()) for d in (dst, single))
    assert (r["videos"], r["rows"], r["listing"]) == (one["videos"], one["rows"], one["listing"])


def test_an_interrupted_preparation_hint_repeats_the_split_flag(tmp_path):
    from prepare.run import interrupted_preparation

    config = {"src": "/d/ucf101", "out": str(tmp_path), "layout": "ucf101", "codec": "vp9", "height": 360, "gop": 16,
              "crf": 32, "splits": [1], "annotations": [], "fps": None}
    report = {"interrupted": True, "config": config, "videos": {"prepared": 3, "reused": 0, "listed": 9}}
    (tmp_path / "prepare_report.json").write_text(json.dumps(report))
    assert ("finish it with `python prepare_data.py /d/ucf101 --out " + str(tmp_path) + " --format ucf101 --codec vp9 "
            "--height 360 --gop 16 --crf 32 --split 1`") in interrupted_preparation(tmp_path)
    report["config"] |= {"layout": "jpg-frames", "annotations": ["/a/u1.json", "/a/u2.json"], "fps": 25.0}
    (tmp_path / "prepare_report.json").write_text(json.dumps(report))
    assert "--crf 32 --annotations /a/u1.json --annotations /a/u2.json --fps 25`" in interrupted_preparation(tmp_path)
