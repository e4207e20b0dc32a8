#!/usr/bin/env python3
"""Put a run's fetched artifacts in place on the control node, whole or not at all.

    install_artifacts.py STAGING DEST FILE...

STAGING holds the files just fetched. Each of them whose digest the run's summary.json records (the
trainer's "sha256") must match it, or nothing is installed: a damaged copy never replaces a good one.
When DEST already holds the same files, nothing happens ("unchanged"). Otherwise an earlier DEST is moved aside to DEST.<UTC time of its summary.json>, the
files are copied next to DEST and the copy is renamed to DEST, so that DEST is never a mix of two
runs ("installed", and "moved aside ..." when something was)."""

from __future__ import annotations

import filecmp
import hashlib
import json
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path


def same_files(staging: Path, dest: Path, names: list[str]) -> bool:
    return dest.is_dir() and all((dest / name).is_file() and filecmp.cmp(staging / name, dest / name, shallow=False)
                                 for name in names)


def aside_name(dest: Path) -> Path:
    """DEST.<time>, the time its run finished (its summary.json's), unique."""
    marker = dest / "summary.json"
    stamp = (marker if marker.exists() else dest).stat().st_mtime
    base = f"{dest.name}.{datetime.fromtimestamp(stamp, timezone.utc):%Y%m%dT%H%M%SZ}"
    candidate, number = dest.with_name(base), 1
    while candidate.exists():
        number += 1
        candidate = dest.with_name(f"{base}-{number}")
    return candidate


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def damaged_files(staging: Path, names: list[str]) -> list[str]:
    """'name (sha256 ..., the summary says ...)' for each fetched file that its digest contradicts."""
    try:
        recorded = json.loads((staging / "summary.json").read_text()).get("sha256", {})
    except (OSError, ValueError, AttributeError):
        recorded = {}  # no summary among the files, or one from before the digests
    damaged = []
    for name in names:
        if name in recorded and (actual := file_sha256(staging / name)) != recorded[name]:
            damaged.append(f"{name} (sha256 {actual[:12]}, its summary.json says {recorded[name][:12]})")
    return damaged


def install(staging: Path, dest: Path, names: list[str]) -> str:
    missing = [name for name in names if not (staging / name).is_file()]
    if missing:
        raise SystemExit(f"install_artifacts: {staging} lacks {', '.join(missing)}; nothing was installed")
    damaged = damaged_files(staging, names)
    if damaged:
        raise SystemExit(f"install_artifacts: the fetched {'; '.join(damaged)} do not match the digests the master "
                         f"recorded when the run finished: its copy on the master, or the transfer, is damaged. "
                         f"Nothing was installed in {dest}; the fetched files stay in {staging} for a look")
    if same_files(staging, dest, names):
        return "unchanged"
    copy = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    for name in names:
        shutil.copy2(staging / name, copy / name)
    report = "installed"
    if dest.exists():
        aside = aside_name(dest)
        dest.rename(aside)
        report += f"; the earlier files moved aside to {aside}"
    copy.chmod(0o755)
    copy.rename(dest)
    return report


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    print(install(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]))
