"""The per-host compose files, rendered by the trainer role for 1- to 11-host inventories:
right rank, world size, master address and interface, and nothing else differs between hosts."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from .helpers import local_inventory, output, run_playbook

# What may differ between two hosts' files: the node rank (and the names, aliases and labels built
# from it), the master alias (on rank 0 only) and the interface.
PER_HOST_ENV = {"NODE_RANK", "NODE_ADDR", "GLOO_SOCKET_IFNAME"}
# What the trainer role has worked out when it renders: the image's name, and the trainer's verdict
# on the configuration and the corpus (the preflight's `chargpt check`).
CORPUS_SHA256 = "5f1d7c1e" * 8
RENDER_FACTS = {"trainer_image_ref": "chargpt-trainer:0123456789ab",
                "trainer_experiment": {"corpus_sha256": CORPUS_SHA256, "experiment": "0" * 16}}


def render(tmp_path: Path, master, workers, host_vars=None, group_vars=None) -> dict[str, dict]:
    out = tmp_path / "compose"
    host_vars = copy.deepcopy(host_vars or {})
    for name in master + workers:
        host_vars.setdefault(name, {})["trainer_compose_dir"] = str(out / name)
    group_vars = {**RENDER_FACTS, **(group_vars or {})}
    inventory = local_inventory(tmp_path / "hosts.yml", master, workers, host_vars=host_vars,
                                group_vars=group_vars)
    result = run_playbook("tests/deploy/render_compose.yml", inventory)
    assert result.returncode == 0, output(result)
    files = {name: yaml.safe_load((out / name / "compose.yml").read_text()) for name in master + workers}
    for name in files:
        # The environment may carry secrets: root's alone.
        assert (out / name / "compose.yml").stat().st_mode & 0o777 == 0o600
        assert (out / name).stat().st_mode & 0o777 == 0o700
    return files


def without_per_host_values(compose: dict) -> dict:
    compose = copy.deepcopy(compose)
    service = compose["services"]["trainer"]
    for key in PER_HOST_ENV:
        service["environment"].pop(key)
    service.pop("container_name")
    service["networks"]["overlay"].pop("aliases")
    service["labels"].pop("org.chargpt.node-rank")
    return compose


@pytest.mark.parametrize("hosts", [1, 2, 11])
def test_ranks_world_size_and_master_address(tmp_path, hosts):
    """Eleven hosts also show that the node addresses sort in rank order: torchrun's c10d rendezvous
    numbers the nodes by sorting their addresses, and a plain number would put rank 10 before 2."""
    names = [f"node{i}" for i in range(1, hosts + 1)]
    files = render(tmp_path, names[:1], names[1:])
    for rank, name in enumerate(names):
        service = files[name]["services"]["trainer"]
        env = service["environment"]
        assert env["NODE_RANK"] == str(rank)
        assert env["NNODES"] == env["MIN_NODES"] == str(hosts)  # by default the group needs every host
        assert env["NPROC_PER_NODE"] == "1"
        assert "WORLD_SIZE" not in env  # torchrun derives it from NNODES and NPROC_PER_NODE
        assert env["MASTER_ADDR"] == "chargpt-master"
        assert env["MASTER_PORT"] == "29500"
        assert env["GLOO_SOCKET_IFNAME"] == "auto"
        assert service["container_name"] == f"chargpt-trainer-rank{rank}"
        aliases = service["networks"]["overlay"]["aliases"]
        assert ("chargpt-master" in aliases) == (rank == 0)
        # The rendezvous ranks nodes by their address: the container's own alias carries the rank.
        assert env["NODE_ADDR"] == f"chargpt-node-{rank:05d}" and env["NODE_ADDR"] in aliases
        assert env["TORCHRUN_JOIN_TIMEOUT_S"] == "600"
        assert service["labels"]["org.chargpt.node-rank"] == str(rank)
        assert service["labels"]["org.chargpt.world-size"] == str(hosts)
    reference = without_per_host_values(files[names[0]])
    for name in names[1:]:
        assert without_per_host_values(files[name]) == reference
    addresses = [files[name]["services"]["trainer"]["environment"]["NODE_ADDR"] for name in names]
    assert sorted(addresses) == addresses and len(set(addresses)) == hosts


def test_container_is_confined_and_attached_to_the_overlay(tmp_path):
    files = render(tmp_path, ["node1"], ["node2"])
    compose = files["node2"]
    service = compose["services"]["trainer"]
    assert compose["name"] == "chargpt"
    assert service["image"] == "chargpt-trainer:0123456789ab"
    assert service["user"] == "10001:10001"
    assert "ports" not in service and "expose" not in service
    assert "privileged" not in service and "network_mode" not in service
    assert service["restart"] == "no"  # the supervisor unit restarts it, except after exit 2
    assert service["labels"]["org.chargpt.corpus-sha256"] == CORPUS_SHA256
    assert (service["mem_limit"], service["pids_limit"], service["shm_size"]) == ("8g", 4096, "1g")
    assert "deploy" not in service  # no GPUs unless configured
    assert compose["networks"]["overlay"] == {"name": "pytorch-dist-overlay-net", "external": True}
    # The corpus read-only, and of the host's run directories only this run's, read-write.
    volumes = {volume["target"]: volume for volume in service["volumes"]}
    assert sorted(volumes) == ["/data", "/runs/shakespeare-cpu"]
    assert volumes["/data"]["source"] == "/srv/chargpt/data" and volumes["/data"]["read_only"] is True
    run_volume = volumes["/runs/shakespeare-cpu"]
    assert run_volume["source"] == "/srv/chargpt/runs/shakespeare-cpu" and not run_volume.get("read_only")
    env = service["environment"]
    assert (env["RUN_ID"], env["TRAIN_PRESET"]) == ("shakespeare-cpu", "cpu")
    assert not [name for name in env if name.startswith("CHARGPT_")]
    assert (env["TRAIN_DATA"], env["RUN_ROOT"], env["TORCHRUN_MAX_RESTARTS"]) == ("/data/input.txt", "/runs", "3")
    assert "cpus" not in service and "cpu_shares" not in service  # no CPU limit or weight unless configured


def test_container_gets_no_privileges_and_a_read_only_image(tmp_path):
    service = render(tmp_path, ["node1"], [])["node1"]["services"]["trainer"]
    assert service["cap_drop"] == ["ALL"] and "cap_add" not in service
    assert service["security_opt"] == ["no-new-privileges:true"]
    assert service["read_only"] is True
    # Scratch space beside the read-only image: a tmpfs that runs nothing unless torch.compile needs it.
    [tmp] = service["tmpfs"]
    assert tmp.startswith("/tmp:") and {"size=512m", "nosuid", "nodev", "noexec"} <= set(tmp[5:].split(","))
    assert service["environment"]["HOME"] == "/tmp"


def test_torch_compile_and_resource_limits(tmp_path):
    """compile=True lets the tmpfs run what torch.compile builds there; CPU, weight, memory and tmp
    size reach the service."""
    service = render(tmp_path, ["node1"], [], group_vars={
        "trainer_overrides": {"compile": True}, "trainer_cpus": "1.5", "trainer_memory_limit": "3g",
        "trainer_tmp_size": "1g", "trainer_cpu_shares": 2})["node1"]["services"]["trainer"]
    options = service["tmpfs"][0].split(":", 1)[1].split(",")
    assert "exec" in options and "noexec" not in options
    assert (service["cpus"], service["cpu_shares"], service["mem_limit"]) == (1.5, 2, "3g")
    assert "size=1g" in options


def test_settings_reach_every_host(tmp_path):
    files = render(tmp_path, ["node1"], ["node2", "node3"], group_vars={
        "cluster_nproc_per_node": 2, "cluster_master_port": 29600, "trainer_preset": "smoke",
        "trainer_run_id": "run-7", "trainer_overrides": {"max_steps": 100, "lr": 0.001, "compile": True},
        "trainer_gpus": "all", "trainer_allow_config_change": ["max_steps", "lr"], "trainer_torchrun_max_restarts": 2,
        "trainer_memory_limit": "2g", "cluster_overlay_network": "other-net", "trainer_torchrun_join_timeout_s": 90,
        "trainer_min_nodes": 2, "trainer_rejoin_wait_s": 45,
        "trainer_environment": {"TRAIN_FAULT_CHECKPOINT_PAUSE": "100:30", "OMP_NUM_THREADS": 2,
                                "LITERAL": "a $b ${c} $$d"}})
    for rank, name in enumerate(["node1", "node2", "node3"]):
        service = files[name]["services"]["trainer"]
        env = service["environment"]
        assert (env["NODE_RANK"], env["NNODES"], env["NPROC_PER_NODE"]) == (str(rank), "3", "2")
        assert (env["MIN_NODES"], env["TORCHRUN_REJOIN_WAIT_S"]) == ("2", "45")
        assert service["labels"]["org.chargpt.world-size"] == "6"
        assert env["MASTER_PORT"] == "29600"
        assert (env["RUN_ID"], env["TRAIN_PRESET"]) == ("run-7", "smoke")
        # Each override is its own variable, read by the trainer's config code.
        assert (env["CHARGPT_MAX_STEPS"], env["CHARGPT_LR"], env["CHARGPT_COMPILE"]) == ("100", "0.001", "True")
        assert env["TORCHRUN_MAX_RESTARTS"] == "2"
        assert env["TORCHRUN_JOIN_TIMEOUT_S"] == "90"
        assert env["CHARGPT_ALLOW_CONFIG_CHANGE"] == "max_steps,lr"
        assert (env["TRAIN_FAULT_CHECKPOINT_PAUSE"], env["OMP_NUM_THREADS"]) == ("100:30", "2")
        # Compose reads "$$" as a literal "$": what the container gets is the value as given.
        assert env["LITERAL"] == "a $$b $${c} $$$$d"
        assert service["mem_limit"] == "2g"
        assert service["deploy"]["resources"]["reservations"]["devices"] == [
            {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        assert files[name]["networks"]["overlay"]["name"] == "other-net"


def test_host_rank_interface_and_cpuset_overrides(tmp_path):
    # node3 is listed before node2 but asks for rank 1; node2 takes rank 2. Interfaces differ per host.
    files = render(tmp_path, ["node1"], ["node3", "node2"], host_vars={
        "node3": {"cluster_node_rank": 1, "trainer_gloo_socket_ifname": "eth1"},
        "node2": {"cluster_node_rank": 2, "trainer_cpuset": "0,2-3"}})
    env = {name: files[name]["services"]["trainer"]["environment"] for name in files}
    assert (env["node1"]["NODE_RANK"], env["node3"]["NODE_RANK"], env["node2"]["NODE_RANK"]) == ("0", "1", "2")
    assert env["node3"]["GLOO_SOCKET_IFNAME"] == "eth1"
    assert env["node2"]["GLOO_SOCKET_IFNAME"] == "auto"
    assert without_per_host_values(files["node3"]) == without_per_host_values(files["node1"])
    # trainer_cpuset pins only the host that sets it.
    assert "cpuset" not in files["node1"]["services"]["trainer"]
    assert files["node2"]["services"]["trainer"]["cpuset"] == "0,2-3"


def test_second_render_changes_nothing(tmp_path):
    render(tmp_path, ["node1"], ["node2"])
    inventory = tmp_path / "hosts.yml"
    result = run_playbook("tests/deploy/render_compose.yml", inventory)
    assert result.returncode == 0, output(result)
    assert result.recap and not result.changed_hosts(), result.recap


def test_no_compose_file_for_a_host_missing_from_the_play(tmp_path):
    """A host that dropped out of the play (here: left out by --limit) leaves the world size
    unformable: no host gets a compose file."""
    out = tmp_path / "compose"
    host_vars = {name: {"trainer_compose_dir": str(out / name)} for name in ("node1", "node2", "node3")}
    inventory = local_inventory(tmp_path / "hosts.yml", ["node1"], ["node2", "node3"], host_vars=host_vars,
                                group_vars=RENDER_FACTS)
    result = run_playbook("tests/deploy/render_compose.yml", inventory, "--limit", "node1,node2")
    text = output(result)
    assert result.returncode != 0, text
    assert "node3 dropped out of this play" in text and "world size of 3 that cannot form" in text
    assert not out.exists()


def test_environment_values_stay_out_of_the_diff(tmp_path):
    """--diff shows no compose file: its environment may carry secrets (first render, then a change)."""
    host_vars = {"node1": {"trainer_compose_dir": str(tmp_path / "compose" / "node1")}}
    secrets = ["s3cret-first-value", "s3cret-second-value"]
    for secret in secrets:
        inventory = local_inventory(tmp_path / "hosts.yml", ["node1"], [], host_vars=host_vars,
                                    group_vars={**RENDER_FACTS, "trainer_environment": {"API_TOKEN": secret}})
        result = run_playbook("tests/deploy/render_compose.yml", inventory, "--diff", "-v")
        assert result.returncode == 0 and result.changed_hosts(), output(result)
        assert not [value for value in secrets if value in output(result)], output(result)


def test_host_network_maps_the_same_names_to_the_hosts_addresses(tmp_path):
    """cluster_network host: no overlay, the host's network, and every trainer's /etc/hosts maps
    MASTER_ADDR and each node's NODE_ADDR (which sort in rank order) to the hosts' addresses; the
    devices it is given, with unlimited locked memory for RDMA. Only the node's own values differ."""
    names = [f"node{i}" for i in range(1, 12)]
    addresses = {name: f"10.0.{i // 10}.{i % 10 + 1}" for i, name in enumerate(names)}
    files = render(tmp_path, names[:1], names[1:], group_vars={"cluster_network": "host",
                                                              "trainer_devices": ["/dev/infiniband"]},
                   host_vars={name: {"ansible_host": address} for name, address in addresses.items()})
    expected_hosts = sorted([f"chargpt-master:{addresses['node1']}"]
                            + [f"chargpt-node-{rank:05d}:{addresses[name]}" for rank, name in enumerate(names)])
    for rank, name in enumerate(names):
        compose = files[name]
        service = compose["services"]["trainer"]
        assert "networks" not in compose and "networks" not in service
        assert service["network_mode"] == "host"
        assert sorted(service["extra_hosts"]) == expected_hosts
        env = service["environment"]
        assert (env["MASTER_ADDR"], env["NODE_ADDR"]) == ("chargpt-master", f"chargpt-node-{rank:05d}")
        assert service["devices"] == ["/dev/infiniband:/dev/infiniband"]
        assert service["ulimits"] == {"memlock": -1}
    plain = {key: value for key, value in files["node2"]["services"]["trainer"].items() if key != "environment"}
    for name in names[2:]:
        other = {key: value for key, value in files[name]["services"]["trainer"].items() if key != "environment"}
        other["container_name"], other["labels"] = plain["container_name"], plain["labels"]
        assert other == plain, name
    # The overlay's compose file names neither.
    (tmp_path / "overlay").mkdir()
    overlay = render(tmp_path / "overlay", names[:1], names[1:2])["node1"]["services"]["trainer"]
    assert {"network_mode", "extra_hosts", "devices", "ulimits"}.isdisjoint(overlay)
