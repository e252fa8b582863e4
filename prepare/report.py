"""What a preparation writes at its end, from its outcomes: the manifests, rejected.csv and prepare_report.json, and
the summary table. One code path for a whole run (prepare_data.py) and for the merge of shards (shards.py), so the
two give the same files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from prepare import run
from prepare.listing import Listing
from prepare.transcode import video_notes

if TYPE_CHECKING:
    from rich.console import Console

# What a user should know about some outputs (transcode.video_notes), by kind: the summary's wording.
NOTE_KINDS = {
    "upscaled": "upscaled (source lower than --height)",
    "single_frame": "1-frame sources (still images)",
    "small": "too small for the GPU decoder",
    "rotated": "rotated/flipped as the source's display matrix says",
    "retimed": "retimed to a constant rate (VFR, dropped frames)",
    "timestamps_guessed": "frames without usable timestamps (counted)",
    "fps_unknown": "frame rate unknown (30 fps used)",
}


def write_results(dst: Path, config: dict, listing: Listing, outcomes: list[run.Outcome], seconds: float,
                  interrupted: bool = False, extra: dict | None = None) -> dict:
    """Write the manifests, classes.csv, rejected.csv and prepare_report.json from the outcomes; return the report.

    config: the run's settings as JSON values (PrepareConfig's fields); extra: more report keys (shards.py's).
    """
    rows, segment_rejects = run.manifest_rows(outcomes, listing.classes)
    rejected = listing.rejected + [(str(o.job.source.path), o.reason) for o in outcomes if o.info is None]
    rejected += segment_rejects
    per_split = run.write_outputs(dst, listing, rows, rejected)
    report = make_report(config, listing, outcomes, rejected, per_split, seconds)
    report["interrupted"] = interrupted  # then the manifests list only the videos done so far
    report |= extra or {}
    run.write_json(report, dst / "prepare_report.json")
    return report


def make_notes(ok: list[run.Outcome], codec: str) -> dict:
    """{kind: {"count": videos, "files": {source: detail}}} for every kind; retimed also totals its frames."""
    out = {kind: {"count": 0, "files": {}} for kind in NOTE_KINDS}
    for o in sorted(ok, key=lambda o: str(o.job.source.path)):
        for kind, text in video_notes(o.info, codec).items():
            out[kind]["files"][str(o.job.source.path)] = text
    for entry in out.values():
        entry["count"] = len(entry["files"])
    out["retimed"] = {"count": out["retimed"]["count"], "frames_duplicated": sum(o.info.duplicated for o in ok),
                      "frames_dropped": sum(o.info.dropped for o in ok), "files": out["retimed"]["files"]}
    return out


def make_report(config: dict, listing: Listing, outcomes: list[run.Outcome], rejected: list[tuple[str, str]],
                per_split: dict[str, int], seconds: float) -> dict:
    """The run's numbers (prepare_report.json). videos: listed = prepared + reused + rejected once every job
    has finished (an interrupted run lists more than it finished); rejected counts videos (rejected.csv also has
    a row per empty segment, counted in rejected_by_reason). listing: what the layout's reader noted (the
    splits' manifests and the videos they leave out, the frame rate of frame folders, ...)."""
    ok = [o for o in outcomes if o.info]
    new = [o for o in ok if not o.reused]
    new_frames = sum(o.info.num_frames for o in new)
    by_reason = Counter(reason.split(":")[0] for _, reason in rejected)
    return {
        "layout": config["layout"], "src": config["src"], "dst": config["out"], "config": config,
        "videos": {"listed": len(listing.sources) + len(listing.rejected), "prepared": len(new),
                   "reused": len(ok) - len(new), "rejected": len(listing.rejected) + len(outcomes) - len(ok)},
        "rows": per_split, "classes": len(listing.classes),
        "frames": sum(o.info.num_frames for o in ok), "frames_transcoded": new_frames,
        "bytes_in": sum(o.info.bytes_in for o in ok), "bytes_out": sum(o.info.bytes_out for o in ok),
        "seconds": round(seconds, 2),
        "frames_per_s": round(new_frames / seconds, 1) if seconds > 0 else 0.0,
        # by count, then name: the same order whatever order the outcomes came in (one run or merged shards)
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))),
        "notes": make_notes(ok, config["codec"]),
        "decode_errors": sorted(f"{o.job.source.path}: {o.info.decode_errors}" for o in ok if o.info.decode_errors),
        "listing": listing.notes,
    }


def print_summary(r: dict, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"prepare_data.py: {r['layout']} -> {r['dst']}", show_header=False)
    v = r["videos"]
    for name, value in [
        ("videos prepared now / reused / rejected", f"{v['prepared']} / {v['reused']} / {v['rejected']}"),
        ("manifest rows per split", ", ".join(f"{k} {n}" for k, n in r["rows"].items()) or "none"),
        ("classes", r["classes"]),
        ("frames in manifests / transcoded now", f"{r['frames']} / {r['frames_transcoded']}"),
        ("size in -> out", f"{r['bytes_in'] / 1e6:.1f} MB -> {r['bytes_out'] / 1e6:.1f} MB"),
        ("time, speed", f"{r['seconds']:.1f} s, {r['frames_per_s']:.0f} frames/s"),
        ("rejected by reason", ", ".join(f"{k} {n}" for k, n in r["rejected_by_reason"].items()) or "none"),
    ]:
        table.add_row(name, str(value))
    listing = r.get("listing", {})
    if listing.get("not_used", {}).get("count"):
        table.add_row("listed but not used by the splits", f"{listing['not_used']['count']} (not prepared)")
    if "fps" in listing:
        table.add_row("frame rate of the frame folders",
                      f"{listing['fps']:g} fps" + ("" if listing["fps_given"] else " (--fps not given: the default)"))
    for kind, entry in r["notes"].items():
        if entry["count"]:
            extra = (f" ({entry['frames_duplicated']} frames duplicated, {entry['frames_dropped']} dropped)"
                     if kind == "retimed" else "")
            table.add_row(NOTE_KINDS[kind], f"{entry['count']}{extra}")
    console.print(table)
    for kind, entry in r["notes"].items():
        for source, text in list(entry["files"].items())[:3]:
            console.print(f"note: {source}: {text}")
        if entry["count"] > 3:
            console.print(f"note: ... {entry['count'] - 3} more {kind} in prepare_report.json")
