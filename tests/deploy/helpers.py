"""Run the project's playbooks against throw-away inventories of local hosts (through the harness)."""

from __future__ import annotations

import sys
from pathlib import Path

import harness.playbook
from harness import CORPUS, REPO
from harness.inventory import write_inventory
from harness.playbook import PlaybookRun, ansible_env, tool

__all__ = ["CORPUS", "REPO", "ansible_env", "local_inventory", "output", "run_playbook", "tool"]


def local_inventory(path: Path, master: list[str], workers: list[str], managers: list[str] | None = None,
                    host_vars: dict[str, dict] | None = None, group_vars: dict | None = None,
                    cluster_only: list[str] | None = None) -> Path:
    """Write an inventory in the project's shape whose hosts are all this machine."""
    all_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "trainer_corpus_path": str(CORPUS),
        # Registry mode: the preflight play does not look for a base image on this machine.
        "trainer_image_registry": "registry.invalid/chargpt",
        "trainer_image_tag": "test",
        **(group_vars or {}),
    }
    return write_inventory(path, master=master, workers=workers, managers=managers, all_vars=all_vars,
                           host_vars=host_vars, cluster_only=cluster_only)


def run_playbook(playbook: str, inventory: Path, *args: str, timeout: int = 300,
                 env: dict[str, str] | None = None) -> PlaybookRun:
    return harness.playbook.run_playbook(playbook, inventory, *args, timeout=timeout, env=env)


def output(result: PlaybookRun) -> str:
    """The run's output with whitespace collapsed, to compare with Ansible's folded messages."""
    return result.text
