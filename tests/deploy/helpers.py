"""Run the project's playbooks against throw-away inventories of local hosts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"


def tool(name: str) -> str:
    """An Ansible command from the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install requirements.txt into this environment")
    return found


def ansible_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_LOCALHOST_WARNING="false")
    return env


def local_inventory(path: Path, master: list[str], workers: list[str], managers: list[str] | None = None,
                    host_vars: dict[str, dict] | None = None, group_vars: dict | None = None,
                    cluster_only: list[str] | None = None) -> Path:
    """Write an inventory in the project's shape whose hosts are all this machine."""
    host_vars = host_vars or {}
    hosts = lambda names: {name: dict(host_vars.get(name, {})) for name in names}  # noqa: E731
    cluster: dict = {"children": {"master": {"hosts": hosts(master)}, "workers": {"hosts": hosts(workers)}}}
    if cluster_only:
        cluster["hosts"] = hosts(cluster_only)
    all_vars = {
        "ansible_connection": "local",
        "ansible_python_interpreter": sys.executable,
        "trainer_project_dir": str(REPO),
        "trainer_corpus_path": str(CORPUS),
        # Registry mode: the preflight play does not look for a base image on this machine.
        "trainer_image_registry": "registry.invalid/chargpt",
        "trainer_image_tag": "test",
    }
    all_vars.update(group_vars or {})
    inventory = {"all": {"vars": all_vars, "children": {
        "cluster": cluster,
        "managers": {"hosts": {name: {} for name in (master[:1] if managers is None else managers)}},
    }}}
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def run_playbook(playbook: str, inventory: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("ansible-playbook"), "-i", str(inventory), str(REPO / playbook), *args],
        cwd=REPO, env=ansible_env(), capture_output=True, text=True, timeout=timeout)


def output(result: subprocess.CompletedProcess) -> str:
    # Ansible folds long messages; compare with whitespace collapsed.
    return " ".join((result.stdout + result.stderr).split())
