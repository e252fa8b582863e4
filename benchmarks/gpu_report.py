"""The GPU check's results: merges each step's JSON into one file per benchmark, and prints the key numbers.

    python benchmarks/gpu_report.py collect RESULTS OUT   # after every step of gpu_check.sh
    python benchmarks/gpu_report.py summary RESULTS OUT   # at its end: the lines appended to OUT/summary.txt

RESULTS is the check's working folder of per-step files: <kind>-<step>.json for kind in decode
(decode_speed.py), e2e (train_speed.py --data) and loader (loader_speed.py), versions.json (decode_speed.py
--versions), <step>.xml (pytest --junitxml of the pytest steps) and train-<backend>.csv (train.py's metrics.csv). `collect` writes
OUT/<kind>.json = {"runs": [each step's file minus its rows, with "step"], "rows": [every row, with "step"]},
steps in the order they ran; a step that was killed mid-way keeps the rows it had written. Standard library
only: it runs wherever the check does, also when the steps' packages are missing.
"""

from __future__ import annotations

import csv
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

KINDS = ("decode", "e2e", "loader")


def _load(path: Path) -> dict | None:
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, or cut off mid-write by a kill: the step's line says why
        return None
    return d if isinstance(d, dict) else None


def _steps(results: Path, kind: str) -> list[Path]:
    """results/<kind>-*.json in the order the steps wrote them."""
    return sorted(results.glob(f"{kind}-*.json"), key=lambda p: p.stat().st_mtime_ns)


def merge(results: Path, kind: str) -> dict:
    """{"runs": [...], "rows": [...]} of every <kind>-<step>.json (module docstring). loader_speed.py's failed
    configurations become rows with an "error"."""
    runs, rows = [], []
    for path in _steps(results, kind):
        d = _load(path)
        if d is None:
            continue
        step = path.stem
        runs.append({"step": step, **{k: v for k, v in d.items() if k not in ("rows", "failed")}})
        rows += [{"step": step, **r} for r in d.get("rows", []) + d.get("failed", [])]
    return {"runs": runs, "rows": rows}


def collect(results: Path, out: Path) -> list[Path]:
    """Write out/<kind>.json for each kind with at least one step file; returns the files written."""
    written = []
    for kind in KINDS:
        merged = merge(results, kind)
        if merged["runs"]:
            path = out / f"{kind}.json"
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(merged, indent=1) + "\n")
            tmp.replace(path)  # never a half-written file in OUT, whenever the check is stopped
            written.append(path)
    return written


def _f(x, fmt: str = "{:.1f}") -> str:
    return "" if x is None else fmt.format(x)


def versions_line(results: Path) -> list[str]:
    v = _load(results / "versions.json")
    if v is None:
        return ["versions: not recorded (see env.txt and log.txt)"]
    nvdec = v.get("nvdec")
    if isinstance(nvdec, dict):
        nvdec = f"{nvdec.get('engines')} engine(s), min size " + ", ".join(
            f"{c} {lim[0]}x{lim[1]}" for c, lim in nvdec.items() if c != "engines")
    return [f"GPU {v.get('gpu')}, driver {v.get('driver')}; torch {v.get('torch')}, CUDA {v.get('cuda')}, "
            f"cuDNN {v.get('cudnn')}; PyNvVideoCodec {v.get('pynvvideocodec')}; DALI {v.get('dali')}; "
            f"PyAV {v.get('av')}; NVDEC {nvdec}"]


def pytest_lines(results: Path, log: Path) -> list[str]:
    """Per pytest step in the log (pytest, pytest-360p): the counts of its JUnit XML (results/<step>.xml) and a
    line per failed test. A step without its XML (timed out, crashed, stopped) gets what its `pytest -v` lines in
    the log show instead, and the test it was in when it ended."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    lines = []
    for section in re.split(r"^===== ", text, flags=re.M):
        step = re.match(r"(pytest[\w-]*) \(limit ", section)
        if step:
            lines += _pytest_step(results / f"{step.group(1)}.xml", step.group(1), section)
    return lines


def _pytest_step(xml: Path, step: str, section: str) -> list[str]:
    try:
        root = ET.parse(xml).getroot()
    except (OSError, ET.ParseError):
        root = None
    suite = None if root is None else root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        found = re.findall(r"^(tests/\S+::\S+)(?: (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b)?", section, re.M)
        counts = {}
        for _, outcome in found:
            counts[outcome or "started"] = counts.get(outcome or "started", 0) + 1
        shown = ", ".join(f"{n} {k.lower()}" for k, n in counts.items() if k != "started") or "no test result"
        last = f"; it ended in {found[-1][0]}" if found and not found[-1][1] else ""
        return [f"{step}: no report (the step did not finish); its log shows {shown}{last}"]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    lines = [f"{step}: {passed} passed, {n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped in "
             f"{float(suite.get('time', 0)):.0f} s"]
    for case in suite.iter("testcase"):
        for bad in [*case.findall("failure"), *case.findall("error")]:
            message = (bad.get("message") or bad.text or "").strip().splitlines() or [""]
            name = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            lines.append(f"  {'FAILED' if bad.tag == 'failure' else 'ERROR'} {name}: {message[0][:300]}")
    return lines


def decode_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    out = ["decode (clips/s | host CPU ms/clip | NVDEC % mean/max | frames/clip | threads; the host row: clips per "
           "CPU-second):"]
    for r in rows:
        head = f"  {r['strategy']:13s} {r['format'] or '-':9s}"
        if "clips_per_s" in r or "clips_per_cpu_s" in r:
            util = "" if r.get("nvdec_util_mean") is None else f"{r['nvdec_util_mean']:.0f}/{r['nvdec_util_max']}"
            rate = f"{r['clips_per_s']:8.1f}" if "clips_per_s" in r else f"{r['clips_per_cpu_s']:8.1f}/CPU-s"
            out.append(f"{head} {rate} | {_f(r.get('host_cpu_ms_per_clip'), '{:.3f}'):>6s} | "
                       f"{util:>7s} | {_f(r.get('frames_per_clip')):>4s} | {r.get('threads', '')}")
        else:
            out.append(f"{head} {'skipped: ' + r['skipped'] if r.get('skipped') else 'error: ' + str(r.get('error'))}")
    return out


def e2e_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        head = f"e2e {r['arch']} {r['backend']} b{r['batch_size']} {r['precision']}:"
        if "ratio" in r:
            out.append(f"{head} real {r['real_clips_per_s']:.1f} / synthetic {r['synthetic_clips_per_s']:.1f} clips/s "
                       f"= {r['ratio']:.3f}, data wait {r['data_wait_share']:.0%}")
        else:
            out.append(f"{head} error: {r.get('error')}")
    return out


def train_lines(results: Path) -> list[str]:
    out = []
    for path in sorted(results.glob("train-*.csv")):
        try:
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
        except OSError:
            continue
        for r in rows:
            out.append(f"train.py --backend {path.stem[len('train-'):]}: epoch {r.get('epoch')}: "
                       f"{float(r['clips_per_s']):.1f} clips/s, data wait {float(r['data_wait_share']):.0%}")
    return out


def loader_lines(rows: list[dict]) -> list[str]:
    out = []
    for r in rows:
        if "clips_per_s" in r:
            out.append(f"loader {r['config']} {r['mode']}: {r['clips_per_s']:.1f} clips/s "
                       f"({r['clips_per_s_min']:.1f}-{r['clips_per_s_max']:.1f}), CPU util {r['cpu_util']:.2f}, "
                       f"first batch {r['first_batch_s']:.2f} s")
        else:
            out.append(f"loader {r['config']} {r['mode']}: error: {r.get('error')}")
    return out


def summary(results: Path, out: Path) -> list[str]:
    """The key numbers, one line each (module docstring). A part that cannot be read (a benchmark's rows of
    another shape) is one line saying so; the other parts are still printed."""
    parts = [("versions", lambda: versions_line(results)), ("pytest", lambda: pytest_lines(results, out / "log.txt")),
             ("decode", lambda: decode_lines(merge(results, "decode")["rows"])),
             ("e2e", lambda: e2e_lines(merge(results, "e2e")["rows"])), ("train", lambda: train_lines(results)),
             ("loader", lambda: loader_lines(merge(results, "loader")["rows"]))]
    lines = []
    for name, part in parts:
        try:
            lines += part()
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            lines.append(f"{name}: cannot summarise ({type(e).__name__}: {e}); the rows are in OUT")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("collect", "summary"):
        print("usage: gpu_report.py collect|summary RESULTS OUT", file=sys.stderr)
        return 2
    results, out = Path(argv[1]), Path(argv[2])
    collect(results, out)
    if argv[0] == "summary":
        print("\n".join(summary(results, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
