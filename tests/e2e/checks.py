"""The checks of a deployed cluster, one function each; each raises AssertionError naming the
host and what is wrong. tests/e2e/test_cluster.py runs them; the lab scenarios re-run them after
changing the cluster."""

from __future__ import annotations

import functools
import hashlib
import re
import shlex
from concurrent.futures import ThreadPoolExecutor

from harness.roles import role_default

from .cluster import (INVENTORY_HOST_LABEL, NODE_RANK_LABEL, WORLD_SIZE_LABEL, Cluster, read_metrics,
                      world_sizes_logged)

PROBE_PORT = 29650
PROBE_SERVER = """
import socket
server = socket.create_server(("", %d))
while True:
    connection, _ = server.accept()
    connection.sendall(socket.gethostname().encode())
    connection.close()
""" % PROBE_PORT
PROBE_CLIENT = """
import socket, sys, time
for target in sys.argv[1:]:
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.create_connection((target, %d), timeout=5) as connection:
                print(target, connection.recv(200).decode())
                break
        except OSError as error:
            if time.monotonic() > deadline:
                sys.exit(f"{target}: {error}")
            time.sleep(1)
""" % PROBE_PORT
# A size as Docker and Compose read one (go-units' RAMInBytes): "8g", "512m", "1.5GiB", or bytes.
DOCKER_SIZE = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp]?)i?b?$", re.I)
# The strings Ansible's bool filter takes for true: the compose template's test of trainer_overrides.compile.
ANSIBLE_TRUE = {"1", "true", "yes", "on", "y", "t"}


def docker_bytes(size: str | int) -> int:
    """A Docker size in bytes; k, m, g, t and p count in 1024s, as Docker's do."""
    match = DOCKER_SIZE.match(str(size).strip())
    if match is None:
        raise ValueError(f"{size!r} is not a size Docker reads")
    number, unit = match.groups()
    power = "kmgtp".index(unit.lower()) + 1 if unit else 0
    return int(float(number) * 1024 ** power)


def each_host(cluster: Cluster, check) -> None:
    """Run check(name) on every host at once (each mostly waits on commands on its own host), and
    report every host that fails, not just the first."""
    def failure(name: str) -> str | None:
        try:
            check(name)
        except AssertionError as error:
            return f"{name}: {error}"
        return None
    with ThreadPoolExecutor(max_workers=max(1, len(cluster.names))) as pool:
        failures = [found for found in pool.map(failure, cluster.names) if found]
    assert not failures, "\n".join(failures)


# --- Every host ------------------------------------------------------------------------------

def check_docker_service(cluster: Cluster) -> None:
    def check(name):
        service = cluster.host(name).service("docker")
        assert service.is_running, "the docker service is not running"
        assert service.is_enabled, "the docker service is not enabled"
    each_host(cluster, check)


def check_compose_v2(cluster: Cluster) -> None:
    def check(name):
        version = cluster.sh(name, "docker compose version --short").strip()
        assert re.match(r"v?2\.", version), f"`docker compose` is {version!r}, not Compose v2"
    each_host(cluster, check)


def check_docker_sdk(cluster: Cluster) -> None:
    def check(name):
        python = cluster.hostvars(name).get("ansible_python_interpreter", "/usr/bin/python3")
        version = cluster.sh(name, "%s -c 'import docker; print(docker.__version__)'", python).strip()
        assert int(version.split(".")[0]) >= 5, f"Docker SDK for Python {version} is too old"
    each_host(cluster, check)


def check_engine_runtime_packages(cluster: Cluster) -> None:
    """What the engine uses besides its own packages (docker_packages_runtime: AppArmor's tools,
    pigz for unpacking pulled layers) is installed."""
    def check(name):
        for package in cluster.setting(name, "docker", "docker_packages_runtime"):
            assert cluster.host(name).package(package).is_installed, f"{package} is not installed"
    each_host(cluster, check)


# --- Swarm and overlay -----------------------------------------------------------------------

def check_swarm(cluster: Cluster) -> None:
    def check(name):
        state = cluster.sh(name, "docker info --format '{{.Swarm.LocalNodeState}}'").strip()
        assert state == "active", f"swarm state is {state!r}"
    each_host(cluster, check)

    manager = cluster.first_manager
    ids = cluster.sh(manager, "docker node ls -q").split()
    nodes = {}
    for node in cluster.docker_json(manager, "node", "inspect", *ids):
        host = (node["Spec"].get("Labels") or {}).get(INVENTORY_HOST_LABEL, node["Description"]["Hostname"])
        nodes[host] = node
    missing = [name for name in cluster.names if name not in nodes]
    assert not missing, f"hosts not in the swarm: {missing} (nodes: {sorted(nodes)})"
    for name in cluster.names:
        node = nodes[name]
        want = "manager" if name in cluster.managers else "worker"
        assert node["Spec"]["Role"] == want, f"{name} is a swarm {node['Spec']['Role']}, expected {want}"
        assert node["Status"]["State"] == "ready", f"{name}'s swarm node is {node['Status']['State']}"
        rank = (node["Spec"].get("Labels") or {}).get(NODE_RANK_LABEL)
        assert rank == str(cluster.rank(name)), (
            f"{name}'s node label {NODE_RANK_LABEL} is {rank!r}, expected {cluster.rank(name)}")


def check_overlay_network(cluster: Cluster) -> None:
    network_name = cluster.overlay_network
    [network] = cluster.docker_json(cluster.first_manager, "network", "inspect", network_name)
    assert network["Driver"] == "overlay", f"{network_name} has driver {network['Driver']}"
    assert network["Scope"] == "swarm", f"{network_name} has scope {network['Scope']}"
    assert network["Attachable"] is True, f"{network_name} is not attachable"


def check_overlay_reaches_across_hosts(cluster: Cluster) -> None:
    """A container of the trainer image on every host answers one on every other host."""
    network = cluster.overlay_network
    image = cluster.rank0_container().raw["Config"]["Image"]
    # The trainer's user: the probes run as the trainers do.
    user = f"{role_default('trainer', 'trainer_uid')}:{role_default('trainer', 'trainer_gid')}"
    probes = {name: f"chargpt-e2e-probe-{name}" for name in cluster.names}

    def start_server(name: str) -> None:
        cluster.host(name).run("docker rm -f %s", probes[name])
        cluster.docker_run(name, "-d --rm --name %s --hostname %s --network %s --user %s "
                           "--entrypoint python3 %s -c %s", probes[name], probes[name], network, user, image,
                           PROBE_SERVER)

    def reach_the_others(name: str) -> None:
        others = [probe for other, probe in probes.items() if other != name]
        answers = cluster.docker_run(name, "--rm --network %s --user %s --entrypoint python3 %s -c %s "
                                     + " ".join(map(shlex.quote, others)), network, user, image, PROBE_CLIENT)
        for probe in others:
            assert f"{probe} {probe}" in answers, f"did not reach {probe} over {network}: {answers}"

    try:
        each_host(cluster, start_server)
        each_host(cluster, reach_the_others)
    finally:
        each_host(cluster, lambda name: cluster.host(name).run("docker rm -f %s", probes[name]))


# A TLS client of the registry on a host: with the cluster's client certificate, then without one.
REGISTRY_CLIENT = """
import ssl, sys, urllib.request
address, certs = sys.argv[1], "/etc/docker/certs.d/" + sys.argv[1]
def status(with_client_cert):
    context = ssl.create_default_context(cafile=certs + "/ca.crt")
    if with_client_cert:
        context.load_cert_chain(certs + "/client.cert", certs + "/client.key")
    try:
        return str(urllib.request.urlopen("https://" + address + "/v2/", context=context, timeout=10).status)
    except Exception as error:
        return "refused (" + type(error).__name__ + ")"
print(status(True), "|", status(False))
"""


def check_image_registry(cluster: Cluster) -> None:
    """The first manager runs the cluster's registry on its swarm address only; every host trusts its
    CA, holds the client key (0600), and is served only with the client certificate."""
    manager = cluster.first_manager
    address = cluster.sh(manager, "docker info -f '{{.Swarm.NodeAddr}}'").strip()
    registry = f"{address}:{role_default('image_registry', 'image_registry_port')}"
    service = cluster.host(manager).service(role_default("image_registry", "image_registry_service"))
    assert service.is_running and service.is_enabled, f"{manager}: the registry is not running and enabled"
    listening = cluster.host(manager).socket(f"tcp://{registry}")
    assert listening.is_listening, f"{manager}: nothing listens on {registry}"
    assert not cluster.host(manager).socket(f"tcp://0.0.0.0:{registry.split(':')[1]}").is_listening, (
        f"{manager}: the registry listens on every address, not only on {address}")

    def check(name):
        key = cluster.host(name).file(f"/etc/docker/certs.d/{registry}/client.key")
        assert key.exists, f"no client key for the registry at {registry}"
        assert key.mode == 0o600 and key.user == "root", (
            f"the registry's client key is {key.user}'s with mode {oct(key.mode)}, not root's with 0o600")
        answer = cluster.sh(name, "python3 -c %s %s", REGISTRY_CLIENT, registry).strip()
        assert answer.startswith("200 | refused"), (
            f"the registry at {registry} should answer 200 with the client certificate and refuse without: {answer}")
    each_host(cluster, check)


# --- The trainers and their run ----------------------------------------------------------------

def check_trainers_share_one_image(cluster: Cluster) -> None:
    images = {name: cluster.trainer_container(name).raw["Image"] for name in cluster.names}
    assert len(set(images.values())) == 1, f"trainer containers run different images: {images}"


def check_trainers_run_as_non_root(cluster: Cluster) -> None:
    def check(name):
        container = cluster.trainer_container(name)
        user = container.raw["Config"]["User"]
        assert user and user.split(":")[0] not in ("0", "root"), f"{container.name} runs as user {user!r}"
    each_host(cluster, check)


def check_trainers_use_their_network_and_publish_no_ports(cluster: Cluster) -> None:
    """The network cluster_network names: the overlay (the trainer answers to its aliases there, the
    master to MASTER_ADDR), or the host's own, where /etc/hosts gives MASTER_ADDR and every NODE_ADDR
    the hosts' addresses (the rendezvous numbers nodes by NODE_ADDR). No port is published either way."""
    master_addr = cluster.trainer_container(cluster.names[0]).env["MASTER_ADDR"]
    node_addrs = {name: cluster.trainer_container(name).env["NODE_ADDR"] for name in cluster.names}
    assert sorted(node_addrs.values()) == [node_addrs[name] for name in cluster.names], (
        f"NODE_ADDR does not sort in node-rank order: {node_addrs}")
    host_network = {name for name in cluster.names if cluster.setting(name, "cluster", "cluster_network") == "host"}
    # The address each host's swarm node advertises, which the host network's names must stand for
    # (read once per host, whatever form the inventory gives its address in).
    addresses = {name: cluster.sh(name, "docker info --format %s", "{{.Swarm.NodeAddr}}").strip()
                 for name in cluster.names} if host_network else {}

    def check(name):
        container = cluster.trainer_container(name)
        host_config = container.raw["HostConfig"]
        assert not host_config.get("PortBindings"), f"{container.name} publishes {host_config['PortBindings']}"
        assert not host_config.get("PublishAllPorts"), f"{container.name} publishes all ports"
        if name in host_network:
            assert host_config.get("NetworkMode") == "host", (
                f"{container.name} uses network {host_config.get('NetworkMode')!r}, not the host's")
            # The container's /etc/hosts, read on its host: the trainer may have exited.
            hosts_file = cluster.host(name).check_output("cat %s", container.raw["HostsPath"])
            named = {(words[1], words[0]) for words in map(str.split, hosts_file.splitlines()) if len(words) >= 2}
            for other in cluster.names:
                wanted = [node_addrs[other]] + ([master_addr] if other == cluster.names[0] else [])
                for alias in wanted:
                    assert (alias, addresses[other]) in named, (
                        f"{container.name}'s /etc/hosts lacks {alias} {addresses[other]}:\n{hosts_file}")
        else:
            assert host_config.get("NetworkMode") != "host", f"{container.name} uses the host's network"
            aliases = container.raw["NetworkSettings"]["Networks"].get(cluster.overlay_network, {}).get("Aliases") or []
            wanted = [node_addrs[name]] + ([master_addr] if name == cluster.names[0] else [])
            assert set(wanted) <= set(aliases), f"{container.name} on {cluster.overlay_network} has aliases {aliases}"
    each_host(cluster, check)


def check_trainers_are_confined(cluster: Cluster) -> None:
    """No capabilities, no privilege gains, a read-only image with a tmpfs at /tmp (noexec unless the
    trainer compiles), and of the host only the corpus (read-only) and this run's directory (read-write)."""
    def check(name):
        container = cluster.trainer_container(name)
        host_config = container.raw["HostConfig"]
        assert host_config.get("CapDrop") == ["ALL"], f"{container.name} drops {host_config.get('CapDrop')}, not ALL"
        assert not host_config.get("CapAdd"), f"{container.name} adds capabilities {host_config['CapAdd']}"
        assert not host_config.get("Privileged"), f"{container.name} is privileged"
        assert "no-new-privileges:true" in (host_config.get("SecurityOpt") or []), (
            f"{container.name} may gain privileges (SecurityOpt {host_config.get('SecurityOpt')})")
        assert host_config.get("ReadonlyRootfs") is True, f"{container.name}'s image is writable"
        tmpfs = host_config.get("Tmpfs") or {}
        assert "/tmp" in tmpfs, f"{container.name} has no tmpfs at /tmp (its tmpfs: {tmpfs})"
        # The trainer's config reaches it as CHARGPT_<KEY>: the container's own environment says whether it compiles.
        compiles = container.env.get("CHARGPT_COMPILE", "").strip().lower() in ANSIBLE_TRUE
        size = cluster.setting(name, "trainer", "trainer_tmp_size")
        expected = {f"size={size}", "mode=1777", "nosuid", "nodev", "exec" if compiles else "noexec"}
        options = set(tmpfs["/tmp"].split(","))
        assert options == expected, f"{container.name}'s /tmp is mounted with {sorted(options)}, not {sorted(expected)}"
        run_dir = cluster.run_dir_in_container(container)
        mounts = {m["Destination"]: m for m in container.raw["Mounts"]}
        assert sorted(mounts) == sorted(["/data", run_dir]), (
            f"{container.name} mounts {sorted(mounts)}; expected only /data and {run_dir}")
        assert mounts["/data"]["RW"] is False, f"{container.name} may write the corpus"
        assert mounts[run_dir]["RW"] is True, f"{container.name} cannot write its run directory"
    each_host(cluster, check)


def check_trainers_have_their_limits(cluster: Cluster) -> None:
    """The limits that the inventory sets, or else the trainer role's defaults, reach every trainer:
    memory, /dev/shm, processes, the CPUs it may run on, its CPU weight (the engine's default when
    trainer_cpu_shares is 0) and its CPU time (none when trainer_cpus is empty)."""
    def check(name):
        container = cluster.trainer_container(name)
        host_config = container.raw["HostConfig"]
        setting = functools.partial(cluster.setting, name, "trainer")
        expected = {"Memory": docker_bytes(setting("trainer_memory_limit")),
                    "ShmSize": docker_bytes(setting("trainer_shm_size")),
                    "PidsLimit": int(setting("trainer_pids_limit")),
                    "CpusetCpus": str(setting("trainer_cpuset")),
                    "CpuShares": int(setting("trainer_cpu_shares"))}
        for field, value in expected.items():
            assert host_config.get(field) == value, (
                f"{container.name}'s {field} is {host_config.get(field)!r}, not {value!r}")
        # Compose turns cpus into NanoCpus through a float: one part in a million of rounding passes.
        cpus = str(setting("trainer_cpus"))
        want = round(float(cpus) * 1e9) if cpus else 0
        got = host_config.get("NanoCpus") or 0
        assert abs(got - want) <= want * 1e-6, (
            f"{container.name}'s NanoCpus is {got}, not {want} (trainer_cpus {cpus!r})")
    each_host(cluster, check)


def check_image_has_no_setuid_files(cluster: Cluster) -> None:
    """No program in the trainer image runs with its owner's or group's rights."""
    container = cluster.rank0_container()
    image = container.raw["Config"]["Image"]
    found = cluster.docker_run(container.host, "--rm --user 0 --network none --entrypoint find %s "
                               "/ -xdev -type f -perm /6000", image)
    assert not found.strip(), f"{image} holds setuid/setgid files:\n{found}"


def check_trainers_exited_zero(cluster: Cluster) -> None:
    def check(name):
        container = cluster.trainer_container(name)
        state = container.raw["State"]
        assert state["Status"] == "exited" and state["ExitCode"] == 0, (
            f"{container.name} is {state['Status']} with exit code {state['ExitCode']}; its log ends:\n"
            + "\n".join(cluster.logs(name, container.name).splitlines()[-15:]))
    each_host(cluster, check)


def check_world_size(cluster: Cluster) -> None:
    def check(name):
        label = cluster.trainer_container(name).labels.get(WORLD_SIZE_LABEL)
        assert label == str(cluster.world_size), f"world-size label {label!r}, expected {cluster.world_size}"
    each_host(cluster, check)
    rank0 = cluster.rank0_container()
    logged = world_sizes_logged(cluster.logs(rank0.host, rank0.name))
    assert logged, f"{rank0.name}'s log has no world_size=N line"
    assert set(logged) == {cluster.world_size}, (
        f"{rank0.name} logged world_size={logged}, the inventory has {len(cluster)} hosts "
        f"x {cluster.nproc_per_node} processes")


def check_rank0_outputs_on_master(cluster: Cluster) -> None:
    run_dir = cluster.run_dir_on_master()
    master = cluster.host(cluster.names[0])
    for artifact in ("model.pt", "sample.txt", "metrics.jsonl", "summary.json"):
        file = master.file(f"{run_dir}/{artifact}")
        assert file.is_file and file.size > 0, f"{cluster.names[0]}:{run_dir}/{artifact} is missing or empty"


def check_artifacts_fetched(cluster: Cluster, artifacts_dir) -> None:
    run_id = cluster.run_id()
    local = artifacts_dir / run_id
    for artifact in ("model.pt", "sample.txt", "loss.svg", "metrics.jsonl", "summary.json"):
        assert (local / artifact).is_file() and (local / artifact).stat().st_size > 0, (
            f"{local / artifact} is missing or empty: site.yml with trainer_wait=true fetches it")
    remote = cluster.host(cluster.names[0]).file(f"{cluster.run_dir_on_master()}/sample.txt").content
    assert hashlib.sha256(remote).digest() == hashlib.sha256((local / "sample.txt").read_bytes()).digest(), (
        f"{local / 'sample.txt'} differs from the master's")


def check_loss_falls(cluster: Cluster, artifacts_dir) -> None:
    metrics = read_metrics(artifacts_dir / cluster.run_id() / "metrics.jsonl")
    train = [m["train_loss"] for m in metrics if m.get("train_loss") is not None]
    val = [m["val_loss"] for m in metrics if m.get("val_loss") is not None]
    assert len(train) >= 2 and len(val) >= 2, f"too few metrics to see a trend: {metrics}"
    assert train[-1] < train[0], f"train loss did not fall: {train}"
    assert val[-1] < val[0], f"validation loss did not fall: {val}"


# The checks of the hosts themselves (engine, swarm, overlay, registry), whatever their trainers do.
HOST_CHECKS = [check_docker_service, check_compose_v2, check_docker_sdk, check_engine_runtime_packages, check_swarm,
               check_overlay_network, check_overlay_reaches_across_hosts, check_image_registry]
CHECKS = [*HOST_CHECKS, check_trainers_share_one_image, check_trainers_run_as_non_root,
          check_trainers_use_their_network_and_publish_no_ports, check_trainers_are_confined,
          check_trainers_have_their_limits, check_image_has_no_setuid_files, check_trainers_exited_zero,
          check_world_size, check_rank0_outputs_on_master]
ARTIFACT_CHECKS = [check_artifacts_fetched, check_loss_falls]


def check_id(check) -> str:
    """A check's name in a test id: check_swarm -> swarm."""
    return check.__name__.removeprefix("check_")
