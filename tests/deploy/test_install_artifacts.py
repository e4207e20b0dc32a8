"""The run_artifacts role's artifact installer (roles/run_artifacts/files/install_artifacts.py): the fetched
files replace artifacts/<run id>/ whole, an earlier run's files are moved aside, never mixed."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from .helpers import REPO

SCRIPT = REPO / "roles" / "run_artifacts" / "files" / "install_artifacts.py"
FILES = ["model.pt", "summary.json"]


def install(staging, dest) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(staging), str(dest), *FILES],
                          capture_output=True, text=True, timeout=60)


def fill(folder, tag: str):
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        (folder / name).write_text(f"{name} of {tag}\n")
    return folder


def test_first_install_then_unchanged(tmp_path):
    staging, dest = fill(tmp_path / ".staging" / "run", "run 1"), tmp_path / "run"
    first = install(staging, dest)
    assert first.returncode == 0 and first.stdout.strip() == "installed", first.stderr
    assert (dest / "model.pt").read_text() == "model.pt of run 1\n"
    again = install(staging, dest)
    assert again.stdout.strip() == "unchanged"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".staging", "run"]


def test_an_earlier_run_is_moved_aside_whole(tmp_path):
    dest = tmp_path / "run"
    install(fill(tmp_path / ".staging" / "run", "run 1"), dest)
    result = install(fill(tmp_path / ".staging" / "run", "run 2"), dest)
    assert result.returncode == 0 and result.stdout.startswith("installed; the earlier files moved aside to"), result
    [aside] = [path for path in tmp_path.iterdir() if path.name.startswith("run.")]
    assert {path.name: path.read_text() for path in aside.iterdir()} == {
        "model.pt": "model.pt of run 1\n", "summary.json": "summary.json of run 1\n"}
    assert {path.name: path.read_text() for path in dest.iterdir()} == {
        "model.pt": "model.pt of run 2\n", "summary.json": "summary.json of run 2\n"}


def test_an_incomplete_fetch_installs_nothing(tmp_path):
    dest = tmp_path / "run"
    install(fill(tmp_path / ".staging" / "run", "run 1"), dest)
    staging = fill(tmp_path / ".staging" / "run", "run 2")
    (staging / "summary.json").unlink()
    result = install(staging, dest)
    assert result.returncode != 0 and "lacks summary.json" in result.stderr
    assert (dest / "model.pt").read_text() == "model.pt of run 1\n"
    assert sorted(path.name for path in tmp_path.iterdir()) == [".staging", "run"]


def test_a_file_that_contradicts_the_summarys_digest_installs_nothing(tmp_path):
    dest = tmp_path / "run"
    install(fill(tmp_path / ".staging" / "run", "run 1"), dest)
    staging = fill(tmp_path / ".staging" / "run", "run 2")
    model = (staging / "model.pt").read_bytes()
    (staging / "summary.json").write_text(json.dumps({"sha256": {"model.pt": hashlib.sha256(model).hexdigest()}}))
    (staging / "model.pt").write_bytes(model[:5] + bytes([model[5] ^ 1]) + model[6:])  # one bit flipped
    result = install(staging, dest)
    assert result.returncode != 0
    assert "the fetched model.pt (sha256 " in result.stderr and "do not match the digests" in result.stderr
    assert f"Nothing was installed in {dest}" in result.stderr
    assert (dest / "model.pt").read_text() == "model.pt of run 1\n"

    (staging / "model.pt").write_bytes(model)  # an intact copy installs
    assert install(staging, dest).stdout.startswith("installed")
