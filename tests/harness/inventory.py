"""Inventories in the project's shape, written one way:

    all:
      vars: {...}
      children:
        cluster:
          children: {master: {hosts}, workers: {hosts}}
          hosts: {...}            # only hosts of cluster outside master and workers (a bad inventory)
        managers: {hosts}

write_inventory() writes one; Inventory reads one (a file, or a folder with hosts.yml, with its
group_vars/all inlined), changes it and writes it elsewhere through write_inventory(). Layout reads
any inventory (through ansible-inventory) for the cluster's layout as the README describes it."""

from __future__ import annotations

import copy
import json
import subprocess
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from .playbook import ansible_env, tool


def write_inventory(path: str | Path, *, master: list[str], workers: list[str], managers: list[str] | None = None,
                    all_vars: dict | None = None, host_vars: dict[str, dict] | None = None,
                    cluster_only: list[str] | None = None) -> Path:
    """Write an inventory: master (node rank 0) and workers under cluster, managers (by default the
    master) apart, all_vars as all's vars, host_vars {host: {name: value}} on each host's entry in
    cluster (on its managers entry for a manager outside cluster)."""
    host_vars = host_vars or {}
    managers = master[:1] if managers is None else managers

    def hosts(names: list[str], listed_already: Collection[str] = ()) -> dict:
        return {name: {} if name in listed_already else copy.deepcopy(host_vars.get(name, {})) for name in names}

    cluster: dict = {"children": {"master": {"hosts": hosts(master)}, "workers": {"hosts": hosts(workers)}}}
    if cluster_only:
        cluster["hosts"] = hosts(cluster_only)
    inventory: dict = {"all": {}}
    if all_vars:
        inventory["all"]["vars"] = copy.deepcopy(all_vars)
    inventory["all"]["children"] = {
        "cluster": cluster,
        "managers": {"hosts": hosts(managers, listed_already={*master, *workers, *(cluster_only or [])})}}
    path = Path(path)
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def inventory_files(path: str | Path) -> list[Path]:
    """The files Ansible reads for an inventory: a folder's files, or a file with the group_vars and
    host_vars beside it."""
    path = Path(path)
    if path.is_dir():
        return sorted(file for file in path.rglob("*") if file.is_file())
    return [path, *_vars_files(path.parent)]


def _vars_files(folder: Path) -> list[Path]:
    return sorted(file for name in ("group_vars", "host_vars") for file in (folder / name).rglob("*") if file.is_file())


def _hosts(group: dict | None, where: str) -> dict[str, dict]:
    group = group or {}
    _only(group, {"hosts"}, where)
    return {name: dict(values or {}) for name, values in (group.get("hosts") or {}).items()}


def _only(mapping: dict, keys: set[str], where: str) -> None:
    unknown = set(mapping) - keys
    if unknown:
        raise ValueError(f"{where} has {sorted(unknown)}, which an inventory in the project's shape does not")


@dataclass(frozen=True)
class Inventory:
    """An inventory in the project's shape as values: change it with the with_/without methods (or
    dataclasses.replace) and write() the result."""

    master: list[str]
    workers: list[str]
    managers: list[str]
    all_vars: dict = field(default_factory=dict)
    host_vars: dict[str, dict] = field(default_factory=dict)
    cluster_only: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, path: str | Path) -> Inventory:
        """An inventory file, or a folder with hosts.yml; group_vars/all(.yml) beside it goes into
        all_vars. Anything this shape cannot hold (other groups, their vars) is refused."""
        path = Path(path)
        hosts_file = path / "hosts.yml" if path.is_dir() else path
        root = (yaml.safe_load(hosts_file.read_text()) or {}).get("all") or {}
        _only(root, {"vars", "children"}, f"{hosts_file}: all")
        children = root.get("children") or {}
        _only(children, {"cluster", "managers"}, f"{hosts_file}: all.children")
        cluster = children.get("cluster") or {}
        _only(cluster, {"children", "hosts"}, f"{hosts_file}: cluster")
        groups = cluster.get("children") or {}
        _only(groups, {"master", "workers"}, f"{hosts_file}: cluster.children")
        listed = {"master": _hosts(groups.get("master"), f"{hosts_file}: master"),
                  "workers": _hosts(groups.get("workers"), f"{hosts_file}: workers"),
                  "cluster_only": {name: dict(values or {}) for name, values in (cluster.get("hosts") or {}).items()},
                  "managers": _hosts(children.get("managers"), f"{hosts_file}: managers")}
        host_vars: dict[str, dict] = {}
        for entries in listed.values():
            for name, values in entries.items():
                host_vars.setdefault(name, {}).update(values)
        all_vars = dict(root.get("vars") or {})
        for file in _vars_files(hosts_file.parent):
            relative = file.relative_to(hosts_file.parent)
            if relative.parts[0] == "group_vars" and (relative.parts[1] == "all" or relative.stem == "all") \
                    and file.suffix in (".yml", ".yaml"):
                all_vars.update(yaml.safe_load(file.read_text()) or {})
            elif relative.parts[0] in ("group_vars", "host_vars"):
                raise ValueError(f"{file}: only group_vars/all can be inlined into an inventory in the project's shape")
        return cls(master=list(listed["master"]), workers=list(listed["workers"]), managers=list(listed["managers"]),
                   all_vars=all_vars, host_vars={name: values for name, values in host_vars.items() if values},
                   cluster_only=list(listed["cluster_only"]))

    def without(self, host: str) -> Inventory:
        """This inventory without host (in every group, with its variables)."""
        drop = lambda names: [name for name in names if name != host]  # noqa: E731
        return replace(self, master=drop(self.master), workers=drop(self.workers), managers=drop(self.managers),
                       cluster_only=drop(self.cluster_only),
                       host_vars={name: values for name, values in self.host_vars.items() if name != host})

    def with_host_var(self, host: str, name: str, value) -> Inventory:
        host_vars = copy.deepcopy(self.host_vars)
        host_vars.setdefault(host, {})[name] = value
        return replace(self, host_vars=host_vars)

    def with_group_var(self, name: str, value) -> Inventory:
        """This inventory with a variable of the group all."""
        return replace(self, all_vars={**copy.deepcopy(self.all_vars), name: value})

    def write(self, path: str | Path) -> Path:
        return write_inventory(path, master=self.master, workers=self.workers, managers=self.managers,
                               all_vars=self.all_vars, host_vars=self.host_vars, cluster_only=self.cluster_only)


@dataclass(frozen=True)
class Layout:
    """What an inventory says about the cluster, as its README describes it: the master is node rank
    0 and the workers follow in inventory order unless a host sets cluster_node_rank; every host runs
    cluster_nproc_per_node processes; trainer containers are named <cluster_name>-trainer-rank<N>.
    The checks compare what the roles deployed with this."""

    ranks: dict[str, int]
    nproc_per_node: int
    managers: list[str]
    overlay_network: str
    cluster_name: str

    @classmethod
    def read(cls, inventory: Path) -> Layout:
        from .roles import role_default  # roles reads inventories through this module

        listed = json.loads(subprocess.run([tool("ansible-inventory"), "-i", str(inventory), "--list"],
                                           env=ansible_env(), capture_output=True, text=True, check=True).stdout)
        hostvars = listed.get("_meta", {}).get("hostvars", {})

        def group(name: str) -> list[str]:
            return listed.get(name, {}).get("hosts", [])

        def setting(host: str, name: str):
            value = hostvars.get(host, {}).get(name, role_default("cluster", name))
            assert "{{" not in str(value), f"{inventory}: {host} sets {name} to a template, {value!r}"
            return value

        order = group("master") + group("workers")
        assert order, f"{inventory}: no host under the groups master and workers"
        ranks = {host: int(hostvars.get(host, {}).get("cluster_node_rank", index)) for index, host in enumerate(order)}
        nproc = {int(setting(host, "cluster_nproc_per_node")) for host in order}
        assert len(nproc) == 1, f"{inventory}: the hosts run different numbers of processes: {nproc}"
        return cls(ranks=ranks, nproc_per_node=nproc.pop(), managers=group("managers"),
                   overlay_network=setting(order[0], "cluster_overlay_network"),
                   cluster_name=setting(order[0], "cluster_name"))

    @property
    def world_size(self) -> int:
        return len(self.ranks) * self.nproc_per_node

    def trainer_container(self, host: str) -> str:
        return f"{self.cluster_name}-trainer-rank{self.ranks[host]}"
