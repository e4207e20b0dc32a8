"""Run the project's playbooks against throw-away inventories of local hosts (through the harness)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import harness.playbook
from harness import CORPUS, REPO
from harness.inventory import write_inventory
from harness.playbook import PlaybookRun, ansible_env, tool

__all__ = ["CORPUS", "REPO", "ansible_env", "bin_command_module", "local_inventory", "output", "run_playbook",
           "stand_in_playbook", "stand_in_script", "tool"]


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


def bin_command_module(name: str) -> ModuleType:
    """A command of bin/ loaded as a module (it imports bin/chargpt_playbook.py, its neighbour)."""
    path = REPO / "bin" / name
    sys.path.insert(0, str(path.parent))
    module_name = name.replace("-", "_")
    loader = importlib.machinery.SourceFileLoader(module_name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(module_name, loader))
    sys.modules[module_name] = module  # its dataclasses look their module up there
    loader.exec_module(module)
    return module


def stand_in_script(folder_variable: str, body: str) -> str:
    """A stand-in ansible-playbook: it records its arguments and its last -e JSON (`extra`) in
    calls.jsonl and takes the next round of rounds.json (`round_`), both in $folder_variable's
    folder, then runs body."""
    return f"""#!{sys.executable}
import json, os, sys
from pathlib import Path

folder = Path(os.environ["{folder_variable}"])
calls = folder / "calls.jsonl"
extra = [json.loads(value) for flag, value in zip(sys.argv, sys.argv[1:]) if flag == "-e" and value[0] == "{{"][-1]
with calls.open("a") as sink:
    sink.write(json.dumps({{"args": sys.argv[1:], "extra": extra}}) + "\\n")
rounds = json.loads((folder / "rounds.json").read_text())
round_ = rounds[min(len(calls.read_text().splitlines()), len(rounds)) - 1]
""" + body


def stand_in_playbook(tmp_path: Path, script: str, command: Path, folder_variable: str):
    """A function that runs command (with its arguments) with script as the ansible-playbook first on
    PATH, after writing the rounds that script plays to rounds.json; its .calls() reads calls.jsonl,
    where the script records each call. folder_variable tells the script where both files are."""
    (tmp_path / "ansible-playbook").write_text(script)
    (tmp_path / "ansible-playbook").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}", **{folder_variable: str(tmp_path)})

    def run(rounds: list[dict], *args: str) -> subprocess.CompletedProcess:
        (tmp_path / "rounds.json").write_text(json.dumps(rounds))
        return subprocess.run([str(command), *args], env=env, capture_output=True, text=True, timeout=60)
    run.calls = lambda: [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    return run
