"""The cluster checks of the trainers' confinement and limits, run on `docker inspect` results written
here (no lab): a trainer as deployed passes, and each field that is off fails."""

from __future__ import annotations

import copy

import pytest

from .checks import (check_trainers_are_confined, check_trainers_have_their_limits,
                     check_trainers_use_their_network_and_publish_no_ports, docker_bytes)
from .cluster import RUN_ID_LABEL, Cluster, Container

# The fields the two checks read, as `docker inspect` shows a trainer deployed with the role's defaults.
DEFAULT_TRAINER = {
    "Name": "/chargpt-trainer-rank0",
    "Config": {"Env": ["RUN_ROOT=/runs", "CHARGPT_MAX_STEPS=80"], "Labels": {RUN_ID_LABEL: "run1"}},
    "HostConfig": {
        "CapDrop": ["ALL"], "CapAdd": None, "Privileged": False, "SecurityOpt": ["no-new-privileges:true"],
        "ReadonlyRootfs": True, "Tmpfs": {"/tmp": "size=512m,mode=1777,nosuid,nodev,noexec"},
        "Memory": 8589934592, "ShmSize": 1073741824, "PidsLimit": 4096, "CpusetCpus": "", "NanoCpus": 0,
        "CpuShares": 0},
    "Mounts": [{"Destination": "/data", "RW": False}, {"Destination": "/runs/run1", "RW": True}],
}
# An inventory that sets every limit, and the trainer deployed with it.
SETTINGS = {"trainer_memory_limit": "3g", "trainer_shm_size": "256m", "trainer_pids_limit": 100,
            "trainer_cpuset": "0-1", "trainer_cpus": "1.5", "trainer_cpu_shares": 2, "trainer_tmp_size": "1g"}
SET_FIELDS = {"Memory": 3 * 2**30, "ShmSize": 256 * 2**20, "PidsLimit": 100, "CpusetCpus": "0-1",
              "NanoCpus": 1_500_000_000, "CpuShares": 2, "Tmpfs": {"/tmp": "size=1g,mode=1777,nosuid,nodev,noexec"}}


class OneHost:
    """A cluster of one deployed host as the checks see it: its inventory variables and its trainer."""

    names = ["node1"]
    setting = Cluster.setting
    run_dir_in_container = staticmethod(Cluster.run_dir_in_container)

    def __init__(self, raw: dict, inventory_vars: dict | None = None):
        self.raw = raw
        self.inventory_vars = inventory_vars or {}

    def hostvars(self, name: str) -> dict:
        return self.inventory_vars

    def trainer_container(self, name: str) -> Container:
        return Container(name, self.raw)


def trainer(env: list[str] = (), **host_config) -> dict:
    raw = copy.deepcopy(DEFAULT_TRAINER)
    raw["Config"]["Env"] += env
    raw["HostConfig"].update(host_config)
    return raw


@pytest.mark.parametrize("size, expected", [
    ("8g", 8 * 2**30), ("512m", 512 * 2**20), ("64k", 65536), ("1.5GiB", 3 * 2**29), ("2 gb", 2 * 2**30),
    ("1024", 1024), (1024, 1024), ("7b", 7),
])
def test_docker_bytes(size, expected):
    assert docker_bytes(size) == expected


@pytest.mark.parametrize("size", ["lots", "", "8x", "-1g", "1g2"])
def test_docker_bytes_refuses_what_docker_does_not_read(size):
    with pytest.raises(ValueError, match="is not a size Docker reads"):
        docker_bytes(size)


def test_a_trainer_with_the_roles_defaults_passes():
    check_trainers_are_confined(OneHost(trainer()))
    check_trainers_have_their_limits(OneHost(trainer()))


def test_a_trainer_with_the_inventorys_settings_passes():
    cluster = OneHost(trainer(**SET_FIELDS), SETTINGS)
    check_trainers_are_confined(cluster)
    check_trainers_have_their_limits(cluster)


def test_a_compiling_trainer_may_run_programs_from_tmp():
    compiling = OneHost(trainer(["CHARGPT_COMPILE=True"], Tmpfs={"/tmp": "size=512m,mode=1777,nosuid,nodev,exec"}))
    check_trainers_are_confined(compiling)
    with pytest.raises(AssertionError, match=r"/tmp is mounted with .*'noexec'.*, not .*'exec'"):
        check_trainers_are_confined(OneHost(trainer(["CHARGPT_COMPILE=True"])))


@pytest.mark.parametrize("host_config, shown", [
    ({"Tmpfs": None}, "has no tmpfs at /tmp"),
    ({"Tmpfs": {"/run": "size=512m"}}, "has no tmpfs at /tmp"),
    ({"Tmpfs": {"/tmp": "size=512m,mode=1777,nosuid,nodev,exec"}}, "/tmp is mounted with"),
    ({"Tmpfs": {"/tmp": "size=64m,mode=1777,nosuid,nodev,noexec"}}, "size=64m"),
    ({"Tmpfs": {"/tmp": "size=512m,mode=1777,nodev,noexec"}}, "/tmp is mounted with"),
])
def test_a_trainer_without_its_tmp_fails(host_config, shown):
    with pytest.raises(AssertionError, match=shown):
        check_trainers_are_confined(OneHost(trainer(**host_config)))


@pytest.mark.parametrize("host_config, shown", [
    ({"Memory": 0}, "Memory is 0, not 8589934592"),
    ({"Memory": 2**30}, "Memory is 1073741824, not 8589934592"),
    ({"ShmSize": 67108864}, "ShmSize is 67108864"),
    ({"PidsLimit": None}, "PidsLimit is None, not 4096"),
    ({"CpusetCpus": "0-3"}, "CpusetCpus is '0-3', not ''"),
    ({"NanoCpus": 2_000_000_000}, "NanoCpus is 2000000000, not 0"),
    ({"CpuShares": 2}, "CpuShares is 2, not 0"),
])
def test_a_trainer_off_the_roles_defaults_fails(host_config, shown):
    with pytest.raises(AssertionError, match=shown):
        check_trainers_have_their_limits(OneHost(trainer(**host_config)))


def test_a_trainer_off_the_inventorys_settings_fails():
    # Deployed with the defaults while the inventory sets every limit: each field is named.
    with pytest.raises(AssertionError) as failed:
        check_trainers_have_their_limits(OneHost(trainer(), SETTINGS))
    assert "Memory is 8589934592, not 3221225472" in str(failed.value)
    unset_cpus = OneHost(trainer(**{**SET_FIELDS, "NanoCpus": 0}), SETTINGS)
    with pytest.raises(AssertionError, match="NanoCpus is 0, not 1500000000"):
        check_trainers_have_their_limits(unset_cpus)


def test_cpu_time_off_by_a_float_rounding_passes():
    # 300000011 is 0.3 rounded to a 32-bit float, times 1e9: within one part in a million of 0.3 CPUs.
    cluster = OneHost(trainer(**{**SET_FIELDS, "NanoCpus": 300_000_011}), {**SETTINGS, "trainer_cpus": "0.3"})
    check_trainers_have_their_limits(cluster)


def test_a_templated_setting_is_refused():
    cluster = OneHost(trainer(), {"trainer_memory_limit": "{{ 4 * 1024 }}m"})
    with pytest.raises(AssertionError, match="sets trainer_memory_limit to a template"):
        check_trainers_have_their_limits(cluster)


class TwoHosts:
    """Two deployed hosts as the network check sees them: their trainers' inspect results, the
    inventory's cluster_network, each host's swarm address and each container's /etc/hosts file."""

    names = ["node1", "node2"]
    overlay_network = "overlay-net"
    setting = Cluster.setting

    def __init__(self, network: str, raws: dict[str, dict], hosts_files: dict[str, str] | None = None):
        self.vars = {"node1": {"cluster_network": network}, "node2": {"cluster_network": network}}
        self.addresses = {"node1": "10.0.0.1", "node2": "10.0.0.2"}
        self.raws, self.hosts_files = raws, hosts_files or {}

    def sh(self, name: str, command: str, *args) -> str:
        assert command.startswith("docker info"), command
        return self.addresses[name] + "\n"

    def hostvars(self, name: str) -> dict:
        return self.vars[name]

    def trainer_container(self, name: str) -> Container:
        return Container(name, self.raws[name])

    def host(self, name: str):
        files = self.hosts_files

        class Host:
            @staticmethod
            def check_output(command: str, path: str) -> str:
                return files[path]
        return Host()


def networked(network: str, files: dict[str, str] | None = None, **changes) -> TwoHosts:
    """Two trainers as the roles deploy them on network, then changes {host: {inspect field path:
    value}} and files {host: its container's /etc/hosts}."""
    raws, hosts_files = {}, {}
    hosts_file = "127.0.0.1 localhost\n10.0.0.1 chargpt-master\n10.0.0.1 chargpt-node-00000\n10.0.0.2 chargpt-node-00001\n"
    for rank, name in enumerate(TwoHosts.names):
        aliases = (["chargpt-master"] if rank == 0 else []) + [f"chargpt-node-{rank:05d}"]
        raws[name] = {"Name": f"/chargpt-trainer-rank{rank}", "HostsPath": f"/hosts-{name}",
                      "Config": {"Env": ["MASTER_ADDR=chargpt-master", f"NODE_ADDR=chargpt-node-{rank:05d}"]},
                      "HostConfig": {"NetworkMode": "host" if network == "host" else "overlay-net"},
                      "NetworkSettings": {"Networks": {} if network == "host" else {"overlay-net": {"Aliases": aliases}}}}
        hosts_files[f"/hosts-{name}"] = (files or {}).get(name, hosts_file)
    for name, fields in changes.items():
        for path, value in fields.items():
            *parents, last = path.split(".")
            target = raws[name]
            for key in parents:
                target = target[key]
            target[last] = value
    return TwoHosts(network, raws, hosts_files)


@pytest.mark.parametrize("network", ["overlay", "host"])
def test_trainers_on_the_network_their_inventory_names_pass(network):
    check_trainers_use_their_network_and_publish_no_ports(networked(network))


@pytest.mark.parametrize("network, files, changes, message", [
    ("host", None, {"node2": {"HostConfig.NetworkMode": "overlay-net"}}, "not the host's"),
    ("overlay", None, {"node2": {"HostConfig.NetworkMode": "host"}}, "uses the host's network"),
    ("overlay", None, {"node1": {"NetworkSettings.Networks": {"overlay-net": {"Aliases": ["chargpt-node-00000"]}}}},
     "has aliases"),
    ("host", {"node2": "10.0.0.1 chargpt-master\n10.0.0.2 chargpt-node-00001\n"}, {},
     "lacks chargpt-node-00000 10.0.0.1"),
    ("host", {"node1": "10.0.0.9 chargpt-master\n10.0.0.1 chargpt-node-00000\n10.0.0.2 chargpt-node-00001\n"}, {},
     "lacks chargpt-master 10.0.0.1"),
    ("host", None, {"node2": {"HostConfig.PortBindings": {"29500/tcp": [{"HostPort": "29500"}]}}}, "publishes"),
    ("overlay", None, {"node2": {"Config.Env": ["MASTER_ADDR=chargpt-master", "NODE_ADDR=a-node"]}}, "does not sort"),
], ids=["host mode on the overlay", "overlay mode on the host", "master without its alias",
        "a node missing from /etc/hosts", "the master at another address", "a published port", "unsorted NODE_ADDR"])
def test_a_trainer_off_its_network_fails(network, files, changes, message):
    with pytest.raises(AssertionError, match=message):
        check_trainers_use_their_network_and_publish_no_ports(networked(network, files, **changes))
