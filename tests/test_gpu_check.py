"""benchmarks/gpu_check.sh's control flow on a CPU, and the pieces of the GPU check that run without a GPU.

The script runs as it would on the lent GPU machine, with one difference: PYTHON names a fake interpreter
(written here) that logs each call and then runs it, fails it, hangs, ignores SIGTERM or crashes, as the test's
plan says for the first rule whose text occurs in the command line ("real": the real interpreter, e.g. for
benchmarks/gpu_report.py; "parse": the command's own argument parser checks the flags gpu_check.sh passes).
"""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))

FAKE = '''\
#!{python}
"""The interpreter gpu_check.sh gets in tests/test_gpu_check.py (see there)."""
import json, os, signal, sys, time
from pathlib import Path

argv = sys.argv[1:]
line = " ".join(argv)
with open(os.environ["FAKE_CALLS"], "a") as f:
    f.write(json.dumps({{"pid": os.getpid(), "argv": argv}}) + "\\n")
rule = next((r for r in json.loads(os.environ["FAKE_PLAN"]) if r["match"] in line), {{"do": "real"}})
if rule["do"] == "real":
    os.execv("{python}", ["{python}", *argv])


def arg(flag):
    for k, a in enumerate(argv):
        if a == flag:
            return argv[k + 1]
        if a.startswith(flag + "="):
            return a[len(flag) + 1:]


if rule["do"] == "parse":  # the command's own parser checks the flags (exit 2 on a bad one)
    sys.path.insert(0, "{root}")
    sys.path.insert(0, "{root}/benchmarks")
    script = next(a for a in argv if a.endswith(".py"))
    module = __import__(Path(script).stem)
    if hasattr(module, "has_cuda"):
        module.has_cuda = lambda: False  # (decode_speed.py: no torch import just to parse)
    if script.endswith("train.py"):  # the machine gpu_check.sh runs on has a GPU (--backend nvdec needs one)
        import torch
        torch.cuda.is_available, torch.cuda.device_count = (lambda: True), (lambda: 1)
    module.parse_args(argv[argv.index(script) + 1:])
for name, text in rule.get("files", {{}}).items():
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    Path(name).write_text(text)
for name, text in rule.get("out_files", {{}}).items():  # relative to the command's --out
    (Path(arg("--out")) / name).parent.mkdir(parents=True, exist_ok=True)
    (Path(arg("--out")) / name).write_text(text)
if "json" in rule:
    Path(arg("--json")).write_text(json.dumps(rule["json"]))
if "junit" in rule:
    Path(arg("--junitxml")).write_text(rule["junit"])
if "stdout" in rule:
    print(rule["stdout"], flush=True)
print("fake:", rule["do"], flush=True)
if "stderr" in rule:
    print(rule["stderr"], file=sys.stderr, flush=True)
if rule["do"] == "fail":
    sys.exit(1)
if rule["do"] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if rule["do"] in ("hang", "stubborn"):
    time.sleep(3600)
if rule["do"] == "crash":
    os.kill(os.getpid(), signal.SIGSEGV)
if rule["do"] == "abort":
    os.abort()
'''

NO_DALI = "ModuleNotFoundError: No module named 'nvidia.dali'"
VERSIONS = {"python": "3.12.3", "torch": "2.11.0+cu130", "cuda": "13.0", "cudnn": 91900, "gpu": "NVIDIA H100 80GB HBM3",
            "cpus": 16, "driver": "580.82.07", "dali": "unavailable (ModuleNotFoundError)", "pynvvideocodec": "2.2.4",
            "av": "18.1.0", "nvdec": {"engines": 7, "vp9": [128, 128, 8192, 8192], "h264": [48, 16, 4096, 4096]}}


def decode_rows(*rows):
    """decode_speed.py's JSON with rows (strategy, format, clips/s or {"error": ...})."""
    out = []
    for strategy, fmt, x in rows:
        if isinstance(x, dict):
            out.append({"strategy": strategy, "format": fmt, **x})
        else:
            out.append({"strategy": strategy, "format": fmt, "clips_per_s": x, "host_cpu_ms_per_clip": 0.25,
                        "frames_per_clip": 23.5, "threads": 14, "nvdec_util_mean": 61.0, "nvdec_util_max": 97})
    return {"meta": {"versions": VERSIONS}, "rows": out}


E2E = {"env": {}, "config": {}, "rows": [
    {"mode": "end-to-end", "backend": "nvdec", "arch": "resnet-18", "batch_size": 64, "precision": "bf16",
     "real_clips_per_s": 1700.0, "synthetic_clips_per_s": 1850.0, "ratio": 0.919, "data_wait_share": 0.04},
    {"mode": "end-to-end", "backend": "nvdec", "arch": "resnet-34", "batch_size": 64, "precision": "bf16",
     "error": "DecodeError: NVDEC returned 15 of the 16 frames wanted"}]}
LOADER = {"meta": {}, "rows": [{"config": "nvdec-gpu", "mode": "train", "clips_per_s": 2400.0, "clips_per_s_min": 2400.0,
                                "clips_per_s_max": 2400.0, "cpu_util": 3.5, "first_batch_s": 0.2}],
          "failed": [{"config": "nvdec-gpu", "mode": "eval", "error": "RuntimeError: boom"}]}
METRICS = "epoch,train_loss,clips_per_s,data_wait_share\n0,5.9,1500.0,0.125\n"


def run_check(tmp_path, plan, env=(), wait=True):
    """Run gpu_check.sh with the fake interpreter and `plan`; returns (CompletedProcess or Popen, work, out)."""
    fake = tmp_path / "python"
    fake.write_text(FAKE.format(python=sys.executable, root=ROOT))
    fake.chmod(0o755)
    work, out = tmp_path / "work", tmp_path / "out"
    full = {**os.environ, "PYTHON": str(fake), "OUT": str(out), "WORK": str(work), "SITE": str(tmp_path / "no-site"),
            "VIDEOS": "64", "HEIGHT": "360", "FORMATS": "h264-g16 hevc-g16", "LIMIT_MAX": "3", "KILL_AFTER": "1",
            "FAKE_CALLS": str(tmp_path / "calls.jsonl"), **dict(env),
            "FAKE_PLAN": json.dumps([{"match": "gpu_report.py", "do": "real"}, *plan])}
    cmd = ["bash", str(SCRIPT)]
    if not wait:
        return subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True), work, out
    return subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=300), work, out


def calls(tmp_path) -> list[dict]:
    log = tmp_path / "calls.jsonl"
    return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def step_commands(tmp_path) -> list[str]:
    """The steps' own commands, in order, shortened to what tells them apart (probes and gpu_report.py left out)."""
    out = []
    for c in calls(tmp_path):
        a = c["argv"]
        if a[0] == "-c" or a[0].endswith("gpu_report.py"):
            continue
        script = "pytest" if a[:2] == ["-m", "pytest"] else Path(a[0]).name
        keys = [a[k + 1] for k, x in enumerate(a[:-1]) if x in ("--strategies", "--backend", "--configs", "--formats")]
        out.append(" ".join([script, *(["--versions"] if "--versions" in a else []),
                             *(["--prepare-only"] if "--prepare-only" in a else []), *keys]))
    return out


def summary_lines(out: Path) -> list[str]:
    return [re.sub(r"(?<![\d.])\d+ s\b", "N s", x) for x in (out / "summary.txt").read_text().splitlines()]


def assert_dead(pid: int) -> None:
    """pid has ended: gone, or a zombie (timeout's SIGKILL goes to its whole process group, timeout included, so
    the killed child is left to PID 1, which in a container may never reap it)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return
    assert "State:\tZ" in status, status


def dataset_files(work: Path) -> dict:
    data = work / "data" / "vp9-g16-360p-64"
    return {str(data / "train.csv"): "", str(data / "val.csv"): ""}


def test_every_step_runs_after_one_fails_hangs_or_crashes_and_dali_steps_say_why_they_skip(tmp_path):
    """The NVDEC pack (no DALI): each step a different failure; every later step still runs, OUT holds the
    summary, the rows written before a kill, and at most 8 files."""
    work = tmp_path / "work"
    plan = [
        {"match": "import nvidia.dali", "do": "fail", "stderr": NO_DALI},
        {"match": "--versions", "do": "ok", "json": VERSIONS},
        {"match": "--prepare-only", "do": "ok", "files": dataset_files(work)},
        {"match": "--strategies nvdec,nvdec-low,host,augment", "do": "hang",  # writes its first row, then hangs
         "json": decode_rows(("nvdec", "vp9-g16", 812.5))},
        {"match": "pytest-360p.xml", "do": "crash", "stdout": PYTEST_V},
        {"match": "-m pytest", "do": "fail", "junit": JUNIT},
        {"match": "train_speed.py", "do": "fail", "json": E2E},
        {"match": "loader_speed.py", "do": "stubborn", "json": LOADER},
        {"match": "train.py", "do": "ok", "out_files": {"metrics.csv": METRICS}},
        {"match": "--formats h264-g16", "do": "ok", "json": decode_rows(("nvdec", "h264-g16", 640.0), (
            "nvdec-low", "h264-g16", {"error": "DecodeError: NVDEC returned 0 of the 16 frames wanted"}))},
        {"match": "--formats hevc-g16", "do": "abort"},
        {"match": "import", "do": "ok"},  # PyNvVideoCodec, pytest
    ]
    r, work, out = run_check(tmp_path, plan)
    assert r.returncode == 1, r.stdout + r.stderr
    assert step_commands(tmp_path) == [
        "decode_speed.py --versions", "decode_speed.py --prepare-only vp9-g16",
        "decode_speed.py vp9-g16 nvdec,nvdec-low,host,augment", "pytest", "pytest", "train_speed.py nvdec",
        "loader_speed.py nvdec-gpu", "train.py nvdec", "decode_speed.py h264-g16 nvdec,nvdec-low,host",
        "decode_speed.py hevc-g16 nvdec,nvdec-low,host"]
    lines = summary_lines(out)
    assert lines[0].startswith("gpu_check ") and lines[0].endswith(
        f"budget 420s; DALI: {NO_DALI}; PyNvVideoCodec: yes; pytest: yes")
    skip_dali = f"skipped (DALI not importable: {NO_DALI})"
    assert lines[1:16] == [
        "env: exit 0, N s",
        "data: exit 0, N s",
        "decode-nvdec: exit 124 (timed out after 3s), N s",
        "pytest: exit 1, N s",
        "pytest-360p: exit 139 (crashed: segmentation fault), N s",
        "e2e-nvdec: exit 1, N s",
        "loader-nvdec: exit 137 (killed: it outlived SIGTERM by 1s after the 3s limit, or ran out of memory), N s",
        "train: exit 0, N s",
        f"decode-dali: {skip_dali}",
        f"e2e-dali: {skip_dali}",
        f"loader-dali: {skip_dali}",
        f"DALI rows of h264-g16 hevc-g16: skipped (DALI not importable: {NO_DALI})",
        "decode-h264-g16: exit 0, N s",
        "decode-hevc-g16: exit 134 (aborted: SIGABRT, e.g. an exception thrown inside a decoder library), N s",
        "GPU NVIDIA H100 80GB HBM3, driver 580.82.07; torch 2.11.0+cu130, CUDA 13.0, cuDNN 91900; PyNvVideoCodec 2.2.4; "
        "DALI unavailable (ModuleNotFoundError); PyAV 18.1.0; NVDEC 7 engine(s), min size vp9 128x128, h264 48x16",
    ]
    assert lines[16:] == [
        *JUNIT_LINES,
        "pytest-360p: no report (the step did not finish); its log shows 1 passed, 1 skipped; it ended in "
        "tests/test_nvdec_gpu.py::test_gpu_3_one_decoder_follows_every_size_change[hevc-low]",
        "decode (clips/s | host CPU ms/clip | NVDEC % mean/max | frames/clip | threads; the host row: clips per "
        "CPU-second):",
        "  nvdec         vp9-g16      812.5 |  0.250 |   61/97 | 23.5 | 14",
        "  nvdec         h264-g16     640.0 |  0.250 |   61/97 | 23.5 | 14",
        "  nvdec-low     h264-g16  error: DecodeError: NVDEC returned 0 of the 16 frames wanted",
        "e2e resnet-18 nvdec b64 bf16: real 1700.0 / synthetic 1850.0 clips/s = 0.919, data wait 4%",
        "e2e resnet-34 nvdec b64 bf16: error: DecodeError: NVDEC returned 15 of the 16 frames wanted",
        "train.py --backend nvdec: epoch 0: 1500.0 clips/s, data wait 12%",
        "loader nvdec-gpu train: 2400.0 clips/s (2400.0-2400.0), CPU util 3.50, first batch 0.20 s",
        "loader nvdec-gpu eval: error: RuntimeError: boom",
        f"total N s, 6 step(s) failed; results in {out}: decode.json e2e.json env.txt loader.json log.txt summary.txt "
        "train.csv ",
    ]
    assert sorted(p.name for p in out.iterdir()) == ["decode.json", "e2e.json", "env.txt", "loader.json", "log.txt",
                                                      "summary.txt", "train.csv"]
    decode = json.loads((out / "decode.json").read_text())
    assert [(r["step"], r["strategy"], r["format"]) for r in decode["rows"]] == [
        ("decode-nvdec", "nvdec", "vp9-g16"), ("decode-h264-g16", "nvdec", "h264-g16"),
        ("decode-h264-g16", "nvdec-low", "h264-g16")]
    assert [run["step"] for run in decode["runs"]] == ["decode-nvdec", "decode-h264-g16"]
    assert (out / "train.csv").read_text() == METRICS
    log = (out / "log.txt").read_text()
    assert "===== pytest-360p (limit 3s): " in log and "===== decode-hevc-g16 (limit 3s): " in log
    # the stubborn and the hung steps' processes are gone (SIGKILL after the grace, SIGTERM)
    for c in calls(tmp_path):
        if "loader_speed.py" in c["argv"][0] or "augment" in " ".join(c["argv"]):
            assert_dead(c["pid"])


PYTEST_V = """\
tests/test_nvdec_gpu.py::test_gpu_1_cropped_360p_clips_are_the_twins_to_the_bit[h264-native] PASSED [  5%]
tests/test_nvdec_gpu.py::test_gpu_2_decoder_reused_after_end_of_stream[vp9] SKIPPED (why) [ 10%]
tests/test_nvdec_gpu.py::test_gpu_3_one_decoder_follows_every_size_change[hevc-low] """
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="1" failures="1"
skipped="2" tests="9" time="41.2"><testcase classname="tests.test_nvdec_gpu" name="test_gpu_reconfigures[hevc-native]"
time="1.0"><failure message="AssertionError: hevc 202x360 clip 2: NVDEC frames differ from the twin&#10;more">trace
</failure></testcase><testcase classname="tests.test_pipeline" name="test_gpu_device_matches_cpu[dali]" time="0.0">
<error message="fixture failed">x</error></testcase></testsuite></testsuites>"""


JUNIT_LINES = [
    "pytest: 5 passed, 1 failed, 1 errors, 2 skipped in N s",
    "  FAILED tests/test_nvdec_gpu.py::test_gpu_reconfigures[hevc-native]: AssertionError: hevc 202x360 clip 2: "
    "NVDEC frames differ from the twin",
    "  ERROR tests/test_pipeline.py::test_gpu_device_matches_cpu[dali]: fixture failed"]


def test_with_the_full_pack_every_step_runs_and_passes_flags_its_command_accepts(tmp_path):
    """DALI importable: the DALI steps run too, and the decode-FMT steps add the DALI rows. Each benchmark's and
    train.py's own parser accepts the command line gpu_check.sh gives it."""
    work = tmp_path / "work"
    parse = {"do": "parse"}
    plan = [
        {"match": "--versions", "do": "ok", "json": VERSIONS},
        {"match": "--prepare-only", **parse, "files": dataset_files(work)},
        {"match": "-m pytest", "do": "ok", "junit": JUNIT},
        {"match": "train.py --data", **parse, "out_files": {"metrics.csv": METRICS}},
        {"match": ".py", **parse},  # decode_speed.py, train_speed.py, loader_speed.py
        {"match": "import", "do": "ok"},  # nvidia.dali, PyNvVideoCodec, pytest
    ]
    r, work, out = run_check(tmp_path, plan, {"FORMATS": "hevc-g16", "LIMIT_MAX": "120"})  # (parsers import torch)
    assert r.returncode == 0, r.stdout + r.stderr
    assert step_commands(tmp_path) == [
        "decode_speed.py --versions", "decode_speed.py --prepare-only vp9-g16",
        "decode_speed.py vp9-g16 nvdec,nvdec-low,host,augment", "pytest", "pytest", "train_speed.py nvdec",
        "loader_speed.py nvdec-gpu", "train.py nvdec", "decode_speed.py vp9-g16 dali,dali-noindex,dali-k4",
        "train_speed.py dali", "loader_speed.py dali-gpu", "decode_speed.py hevc-g16 nvdec,nvdec-low,host,dali,dali-noindex,dali-k4"]
    lines = summary_lines(out)
    assert lines[0].endswith("DALI: yes; PyNvVideoCodec: yes; pytest: yes")
    assert lines[1:13] == [f"{name}: exit 0, N s" for name in (
        "env", "data", "decode-nvdec", "pytest", "pytest-360p", "e2e-nvdec", "loader-nvdec", "train", "decode-dali",
        "e2e-dali", "loader-dali", "decode-hevc-g16")]
    assert lines[14:20] == JUNIT_LINES + [x.replace("pytest:", "pytest-360p:") for x in JUNIT_LINES]
    assert lines[-1].startswith("total N s, 0 step(s) failed")


def test_a_step_past_the_budget_is_skipped_and_the_summary_still_written(tmp_path):
    work = tmp_path / "work"
    plan = [{"match": "--prepare-only", "do": "hang", "files": dataset_files(work)}, {"match": "", "do": "ok"}]
    r, _, out = run_check(tmp_path, plan, {"BUDGET": "15", "MIN_STEP": "5", "LIMIT_MAX": "60"})
    assert r.returncode == 1
    lines = summary_lines(out)
    data = next(x for x in lines if x.startswith("data: "))
    assert re.fullmatch(r"data: exit 124 \(timed out after ([5-9]|1[0-5])s\), N s", data)  # what was left of 15 s
    after = lines[lines.index(data) + 1:]
    assert after[:5] == [f"{name}: skipped (budget of 15s spent)" for name in (
        "decode-nvdec", "pytest", "pytest-360p", "e2e-nvdec", "loader-nvdec")]
    assert "decode-hevc-g16: skipped (budget of 15s spent)" in after
    assert after[-1].startswith("total N s, 1 step(s) failed")


def test_steps_runs_only_the_steps_named(tmp_path):
    """STEPS (a second call on the same machine): the named steps run, with the dataset of the first call; the
    others say so."""
    work = tmp_path / "work"
    for name in dataset_files(work):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        Path(name).write_text("")
    r, _, out = run_check(tmp_path, [{"match": "", "do": "ok"}], {"STEPS": "pytest-360p train", "FORMATS": "vp9-g8"})
    assert r.returncode == 0, r.stdout
    assert step_commands(tmp_path) == ["pytest", "train.py nvdec"]
    assert summary_lines(out)[1:15] == [f"{name}: {'exit 0, N s' if name in ('pytest-360p', 'train') else 'skipped (not in STEPS)'}"
                                        for name in ("env", "data", "decode-nvdec", "pytest", "pytest-360p", "e2e-nvdec",
                                                     "loader-nvdec", "train", "decode-dali", "e2e-dali", "loader-dali",
                                                     "decode-vp9-g8")] + summary_lines(out)[13:15]


def test_stopping_the_check_stops_its_step_and_finishes_the_summary(tmp_path):
    plan = [{"match": "-m pytest", "do": "stubborn"}, {"match": "--versions", "do": "ok", "json": VERSIONS},
            {"match": "", "do": "ok"}]
    proc, _, out = run_check(tmp_path, plan, {"LIMIT_MAX": "120"}, wait=False)
    deadline = time.monotonic() + 120
    while not any(c["argv"][:2] == ["-m", "pytest"] for c in calls(tmp_path)):
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=30)  # KILL_AFTER 1: the stubborn step is SIGKILLed 1 s after SIGTERM
    assert proc.returncode == 130, stdout
    lines = summary_lines(out)
    assert lines[-5:-1] == ["interrupted by a signal", "pytest: stopped (the check was interrupted)",
                            lines[-3], "pytest: no report (the step did not finish); its log shows no test result"]
    assert lines[-3].startswith("GPU NVIDIA H100 80GB HBM3")
    assert lines[-1].startswith("total N s, 0 step(s) failed")
    assert_dead(next(c["pid"] for c in calls(tmp_path) if c["argv"][:2] == ["-m", "pytest"]))


# ---- the benchmarks' parts of the check ---------------------------------------------------------------------


def test_decode_matrix_runs_by_value():
    """NVDEC rows of the first format, its host cost and the augmentation, its DALI rows, then the next format."""
    from decode_speed import FORMATS, row_order

    assert FORMATS[0] == "vp9-g16"
    got = row_order(("vp9-g16", "h264-g8"), ("dali", "dali-k4", "dali-noindex", "augment", "host", "nvdec-low",
                                             "nvdec", "dali-k2"))
    assert got == [("nvdec", "vp9-g16"), ("nvdec-low", "vp9-g16"), ("host", "vp9-g16"), ("augment", ""),
                   ("dali", "vp9-g16"), ("dali-noindex", "vp9-g16"), ("dali-k2", "vp9-g16"), ("dali-k4", "vp9-g16"),
                   ("nvdec", "h264-g8"), ("nvdec-low", "h264-g8"), ("host", "h264-g8"), ("dali", "h264-g8"),
                   ("dali-noindex", "h264-g8"), ("dali-k2", "h264-g8"), ("dali-k4", "h264-g8")]
    assert row_order((), ("augment", "host")) == [("augment", "")]


def test_decode_matrix_makes_a_format_only_when_its_first_row_runs(tmp_path, monkeypatch, capsys):
    import decode_speed

    made, events = [], []
    monkeypatch.setattr(decode_speed, "has_cuda", lambda: False)
    monkeypatch.setattr(decode_speed, "prepare_format", lambda cfg, fmt: made.append(fmt) or events.append(
        ("prepare", fmt)) or tmp_path / fmt)
    monkeypatch.setattr(decode_speed, "measure", lambda s, fmt, data, cfg, gpu: events.append((s, fmt)) or {
        "strategy": s, "format": fmt, "clips_per_s": 1.0, "clips": 1})
    monkeypatch.setattr(decode_speed, "print_table", lambda rows: None)
    out = tmp_path / "d.json"
    decode_speed.main(["--formats", "h264-g16,vp9-g8", "--strategies", "dali,twin,host", "--json", str(out)])
    assert events == [("prepare", "h264-g16"), ("host", "h264-g16"), ("twin", "h264-g16"), ("prepare", "vp9-g8"),
                      ("host", "vp9-g8"), ("twin", "vp9-g8"), ("dali", "vp9-g8")]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["strategy"], r["format"], r.get("skipped")) for r in rows][2] == (
        "dali", "h264-g16", "DALI's CPU decoder reads VP8/VP9/MJPEG only")


def test_train_speed_saves_each_row_and_records_a_failed_one(tmp_path, monkeypatch):
    """End-to-end mode: a row that fails is recorded with its error and the next one still runs; the file holds
    every finished row before the next starts (a hang later loses nothing); exit status 1."""
    import train_speed

    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("")
    out = tmp_path / "e2e.json"
    seen = []

    def fake(cfg, arch, batch_size, precision):
        seen.append([r["arch"] for r in json.loads(out.read_text())["rows"]] if out.exists() else [])
        if arch == "resnet-18":
            raise ImportError("the NVDEC decoder needs PyNvVideoCodec: pip install pynvvideocodec==2.2.4")
        return {"mode": "end-to-end", "backend": cfg.backend, "arch": arch, "batch_size": batch_size,
                "precision": precision, "real_clips_per_s": 1.0, "synthetic_clips_per_s": 2.0, "ratio": 0.5,
                "data_wait_share": 0.5}

    monkeypatch.setattr(train_speed, "bench_end_to_end", fake)
    monkeypatch.setattr(train_speed, "cost_per_clip", lambda *a: train_speed.ModelCost(parameters=10**6, macs=10**9))
    code = train_speed.main(["--data", str(data), "--backend", "nvdec", "--arch", "resnet-18,resnet-34,resnet-10",
                             "--device", "cpu", "--json", str(out)])
    assert code == 1
    assert seen == [[], ["resnet-18"], ["resnet-18", "resnet-34"]]
    rows = json.loads(out.read_text())["rows"]
    assert rows[0] == {"mode": "end-to-end", "backend": "nvdec", "arch": "resnet-18", "batch_size": 8,
                       "precision": "fp32", "error": "ImportError: the NVDEC decoder needs PyNvVideoCodec: pip install "
                       "pynvvideocodec==2.2.4"}
    assert [r.get("ratio") for r in rows] == [None, 0.5, 0.5]


def test_loader_speed_records_a_failed_configuration_and_exits_1(tmp_path):
    """nvdec-gpu on a machine without CUDA: the child fails; its error is a "failed" entry of the JSON (what
    gpu_report.py shows), the run exits 1."""
    from videos import make_dataset

    data = make_dataset(tmp_path / "ds", {"train": [{"frames": 20}], "val": [{"frames": 20}]}, width=160, height=128)
    out = tmp_path / "loader.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loader_speed.py"), "--data", str(data), "--configs",
                        "nvdec-gpu", "--modes", "train", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    d = json.loads(out.read_text())
    assert d["rows"] == [] and [(f["config"], f["mode"]) for f in d["failed"]] == [("nvdec-gpu", "train")]
    assert "needs CUDA" in d["failed"][0]["error"] or "PyNvVideoCodec" in d["failed"][0]["error"]


def test_a_test_of_a_backend_that_is_not_installed_skips(monkeypatch):
    """tests/conftest.py: on the GPU check's NVDEC pack (no DALI, no decord, no numba), pytest -m gpu skips the
    DALI and pyav cases of a test parametrised by backend and every test of tests/test_pyav.py, with the
    reason, and runs the others."""
    from types import SimpleNamespace

    conftest = sys.modules["conftest"]
    installed = conftest._installed
    assert installed("json") and not installed("nvidia_no_such.dali") and not installed("no_such_package")
    monkeypatch.setattr(conftest, "_installed", lambda module: module == "decord")
    items = [SimpleNamespace(callspec=SimpleNamespace(params={"backend": b}), path=Path("tests/test_pipeline.py"),
                             keywords={}, marks=[]) for b in ("dali", "decord", "nvdec", "pyav")]
    items += [SimpleNamespace(path=Path(f"tests/{f}"), keywords={}, marks=[]) for f in ("test_pyav.py", "test_x.py")]
    for item in items:
        item.add_marker = item.marks.append
    conftest.pytest_collection_modifyitems(None, items)
    assert [[m.kwargs["reason"] for m in item.marks] for item in items] == [
        ["backend 'dali' needs nvidia.dali, which is not installed"], [], [],
        ["backend 'pyav' needs numba, which is not installed"], ["backend 'pyav' needs numba, which is not installed"],
        []]


def test_gpu_report_merges_steps_in_the_order_they_ran(tmp_path, capsys):
    import gpu_report

    res, out = tmp_path / "res", tmp_path / "out"
    res.mkdir()
    out.mkdir()
    for name, rows in (("decode-b", [{"n": 1}]), ("decode-a", [{"n": 2}, {"n": 3}])):
        (res / f"{name}.json").write_text(json.dumps({"meta": {"name": name}, "rows": rows}))
        time.sleep(0.01)
    (res / "decode-cut.json").write_text('{"meta": {}, "rows": [{"n"')  # killed mid-write: left out
    assert gpu_report.collect(res, out) == [out / "decode.json"]
    assert json.loads((out / "decode.json").read_text()) == {
        "runs": [{"step": "decode-b", "meta": {"name": "decode-b"}}, {"step": "decode-a", "meta": {"name": "decode-a"}}],
        "rows": [{"step": "decode-b", "n": 1}, {"step": "decode-a", "n": 2}, {"step": "decode-a", "n": 3}]}
    assert gpu_report.main(["summary", str(res), str(out)]) == 0  # rows of another shape: said, not raised
    assert capsys.readouterr().out.splitlines() == [
        "versions: not recorded (see env.txt and log.txt)",
        "decode: cannot summarise (KeyError: 'strategy'); the rows are in OUT"]
    assert gpu_report.main(["bogus"]) == 2


def test_the_host_row_is_reported_per_cpu_second():
    """decode_speed.py's host row times one thread's CPU: its rate is clips per CPU-second, said so."""
    import gpu_report

    rows = [{"strategy": "nvdec", "format": "vp9-g16", "clips_per_s": 812.5, "host_cpu_ms_per_clip": 0.25},
            {"strategy": "host", "format": "vp9-g16", "clips_per_cpu_s": 11436.9, "host_cpu_ms_per_clip": 0.087}]
    assert gpu_report.decode_lines(rows)[1:] == ["  nvdec         vp9-g16      812.5 |  0.250 |         |      | ",
                                                 "  host          vp9-g16    11436.9/CPU-s |  0.087 |         |      | "]


def test_gpu_check_script_is_what_the_readme_says():
    """The README's GPU section names the command and the files; the script's header lists every step it runs."""
    readme = (ROOT / "README.md").read_text()
    script = SCRIPT.read_text()
    assert "OUT=DIR bash benchmarks/gpu_check.sh" in readme and "docs/gpu_check.md" in readme
    steps = re.findall(r'^\s*step "?([a-z0-9$-]+)', script, re.M)
    assert steps == ["env", "data", "decode-nvdec", "pytest", "pytest-360p", "e2e-nvdec", "loader-nvdec", "train", "decode-dali",
                     "e2e-dali", "loader-dali", "decode-$fmt"]
    header = textwrap.dedent("\n".join(x[1:] for x in script.splitlines()[1:45] if x.startswith("#")))
    for name in steps:
        assert re.search(rf"^  {re.escape(name.replace('$fmt', 'FMT'))}\s", header, re.M), name
