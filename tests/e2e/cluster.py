"""A deployed cluster as the checks see it: the layout its inventory describes (read here from the
inventory itself, not from the cluster role whose result the checks judge), a testinfra host per
inventory host, and the Docker objects the roles create on them (read-only helpers)."""

from __future__ import annotations

import functools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from testinfra.utils.ansible_runner import AnsibleRunner

from harness.inventory import Layout
from harness.roles import role_default

# What the roles put on the Docker objects they create (templates/compose.yml.j2, roles/swarm).
RUN_ID_LABEL = "org.chargpt.run-id"
NODE_RANK_LABEL = "org.chargpt.node-rank"
WORLD_SIZE_LABEL = "org.chargpt.world-size"
INVENTORY_HOST_LABEL = "org.chargpt.inventory-host"
# `docker run` exit status and message when runc failed to set a container up; under load in the
# nested lab engines this happens now and then (runc's "read init-p: connection reset by peer")
# and a second attempt starts the same container.
DOCKER_RUN_FAILED = 125
RUNTIME_CREATE_FAILED = "OCI runtime create failed"
RUNTIME_CREATE_ATTEMPTS = 3


@dataclass(frozen=True)
class Container:
    """One `docker inspect` result, with the fields the checks read."""

    host: str
    raw: dict

    @property
    def name(self) -> str:
        return self.raw["Name"].lstrip("/")

    @property
    def labels(self) -> dict:
        return self.raw["Config"].get("Labels") or {}

    @property
    def env(self) -> dict:
        return dict(item.split("=", 1) for item in self.raw["Config"].get("Env") or [])


class Cluster:
    """The hosts of an inventory's cluster, in node-rank order, with the layout the inventory
    describes (node ranks, world size, container names, overlay, managers)."""

    def __init__(self, inventory: str | Path):
        self.inventory = Path(inventory).resolve()
        self.runner = AnsibleRunner(str(self.inventory))
        self.layout = Layout.read(self.inventory)
        self.names = sorted(self.layout.ranks, key=self.rank)
        self.master = self.names[0]
        self.managers: list[str] = self.layout.managers
        assert self.managers, f"{self.inventory}: no host under the group managers"
        self.first_manager: str = self.managers[0]
        self.world_size: int = self.layout.world_size
        self.nproc_per_node: int = self.layout.nproc_per_node
        self.overlay_network: str = self.layout.overlay_network

    def __len__(self) -> int:
        return len(self.names)

    def hostvars(self, name: str) -> dict:
        return self.runner.get_variables(name)

    def setting(self, name: str, role: str, setting: str):
        """A role's setting on host name as the inventory writes it, else the role's default. Extra
        vars (-e) do not reach the checks: a cluster deployed with the setting given there is judged
        by its inventory's value."""
        value = self.hostvars(name).get(setting, role_default(role, setting))
        assert "{{" not in str(value), (
            f"{name}: the inventory sets {setting} to a template, {value!r}, which the checks cannot render")
        return value

    def rank(self, name: str) -> int:
        return self.layout.ranks[name]

    def trainer_container_name(self, name: str) -> str:
        """The name of host name's trainer container."""
        return self.layout.trainer_container(name)

    @functools.cache
    def host(self, name: str):
        return self.runner.get_host(name)

    def sh(self, name: str, command: str, *args) -> str:
        """Run a command on a host; fail with its output when it does not succeed."""
        return self._stdout(name, self.host(name).run(command, *args))

    def docker_run(self, name: str, arguments: str, *args) -> str:
        """`docker run <arguments>` on a host, again when the runtime failed to create the container."""
        for attempt in range(1, RUNTIME_CREATE_ATTEMPTS + 1):
            result = self.host(name).run("docker run " + arguments, *args)
            transient = result.rc == DOCKER_RUN_FAILED and RUNTIME_CREATE_FAILED in result.stderr
            if not transient or attempt == RUNTIME_CREATE_ATTEMPTS:
                break
            print(f"{name}: docker run attempt {attempt}: {result.stderr.strip()}; trying again")
            time.sleep(2)
        return self._stdout(name, result)

    @staticmethod
    def _stdout(name: str, result) -> str:
        """A command's output; fail with its output when it did not succeed."""
        assert result.rc == 0, f"{name}: `{result.command}` exited {result.rc}: {result.stderr or result.stdout}"
        return result.stdout

    def docker_json(self, name: str, *args) -> list:
        return json.loads(self.sh(name, "docker " + " ".join(["%s"] * len(args)), *args))

    def trainer_containers(self, name: str) -> list[Container]:
        ids = self.sh(name, "docker ps -a -q --no-trunc --filter %s", f"label={RUN_ID_LABEL}").split()
        return [Container(name, raw) for raw in self.docker_json(name, "inspect", *ids)] if ids else []

    def trainer_container(self, name: str) -> Container:
        containers = self.trainer_containers(name)
        assert len(containers) == 1, (
            f"{name}: expected one trainer container (label {RUN_ID_LABEL}), found "
            f"{[c.name for c in containers]}")
        return containers[0]

    def rank0_container(self) -> Container:
        return self.trainer_container(self.names[0])

    def run_id(self) -> str:
        return self.rank0_container().labels[RUN_ID_LABEL]

    def run_dir_on_master(self) -> str:
        """The host path of the master's run directory (the bind mount at RUN_ROOT/<run id>)."""
        container = self.rank0_container()
        run_dir = self.run_dir_in_container(container)
        sources = [m["Source"] for m in container.raw["Mounts"] if m["Destination"] == run_dir]
        assert sources, f"{container.name}: nothing is mounted at its run directory {run_dir}"
        return sources[0]

    @staticmethod
    def run_dir_in_container(container: Container) -> str:
        return f"{container.env.get('RUN_ROOT', '/runs')}/{container.labels[RUN_ID_LABEL]}"

    def logs(self, name: str, container: str) -> str:
        result = self.host(name).run("docker logs %s 2>&1", container)
        return result.stdout


def world_sizes_logged(log: str) -> list[int]:
    return [int(value) for value in re.findall(r"world_size=(\d+)", log)]


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
