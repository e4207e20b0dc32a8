"""Shared helpers for the trainer tests: the corpus, free ports, running the CLI and torchrun."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_DIR = REPO_ROOT / "app"
SHAKESPEARE = (REPO_ROOT / ".." / "shared" / "data" / "tinyshakespeare.txt").resolve()

if str(APP_DIR) not in sys.path:
    sys.path.insert(0, str(APP_DIR))


@pytest.fixture(scope="session")
def corpus_path(tmp_path_factory) -> Path:
    """The first 200,000 characters of tiny-shakespeare (enough for every preset the tests use)."""
    if not SHAKESPEARE.is_file():
        pytest.fail(f"the corpus {SHAKESPEARE} is missing; the tests need it")
    path = tmp_path_factory.mktemp("corpus") / "shakespeare-200k.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a trainer subprocess: chargpt importable, no stray overrides."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("CHARGPT_") and key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(APP_DIR), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def leave_like_the_cli() -> None:
    """End a spawned rank the way `chargpt train` ends one that trained in a group: output flushed,
    no interpreter teardown, in which Gloo's threads now and then abort a process whose run
    succeeded ("terminate called without an active exception")."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def chargpt_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "chargpt", *args]


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}",
            "--nnodes=1", "--master-addr=127.0.0.1", f"--master-port={free_port()}",
            "-m", "chargpt", *args]


def run_process(command: list[str], timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=child_env(**extra_env), capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below folder: to show that nothing changed."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def wait_for(condition, process: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the trainer exited ({process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)


def parent_pids() -> dict[int, int]:
    """{pid: parent pid} of every process that could be read."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def ranks_of(torchrun_pid: int) -> dict[int, int]:
    """{global rank: pid} of torchrun's worker processes."""
    ranks = {}
    for pid, parent in parent_pids().items():
        if parent != torchrun_pid:
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode()
        except (OSError, UnicodeDecodeError):
            continue
        variables = dict(item.split("=", 1) for item in environ.split("\0") if "=" in item)
        if "RANK" in variables:
            ranks[int(variables["RANK"])] = pid
    return ranks
