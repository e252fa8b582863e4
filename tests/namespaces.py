"""A real full disk or a read-only folder for one command, without root and without touching the machine: the command
runs in its own user and mount namespace (`unshare -Urm`), where a small tmpfs is mounted on a folder, or a folder is
bound read-only onto itself. Mode bits cannot make a folder unwritable for tests that run as root; a mount can.

    cmd = in_namespace([sys.executable, "train.py", ...], tmpfs={run / "checkpoints": 300_000})
    subprocess.run(cmd)   # the mounts exist for this command only, and vanish with it

Tests that need it are marked @needs_namespaces: they skip where user namespaces are disabled.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest


def namespaces_work() -> bool:
    """Whether this machine lets an unprivileged process mount a tmpfs in a user namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
                           capture_output=True)
    return probe.returncode == 0


needs_namespaces = pytest.mark.skipif(not namespaces_work(), reason="needs user namespaces (unshare -Urm) for a "
                                                                    "real full disk or read-only folder")


def in_namespace(command: list[str], tmpfs: dict[Path, int] | None = None, read_only: list[Path] | None = None,
                 after: str = "") -> list[str]:
    """command, to run with a tmpfs of size bytes (rounded up to pages) mounted on each folder of tmpfs, and each
    folder of read_only bound read-only; `after`: a shell command run in the namespace once command has ended (to
    copy what a tmpfs holds out of it). The command's exit status is kept."""
    steps = [f"mount -t tmpfs -o size={size} none {shlex.quote(str(folder))}" for folder, size in
             (tmpfs or {}).items()]
    steps += [f"mount --bind {q} {q} && mount -o remount,ro,bind {q}" for q in map(shlex.quote, map(str, read_only or []))]
    script = " && ".join(steps) + ' && { "$@"; status=$?; ' + (after + "; " if after else "") + "exit $status; }"
    return ["unshare", "-Urm", "sh", "-c", script, "sh", *command]
