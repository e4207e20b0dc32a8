"""Reading the torchrun environment, choosing the Gloo interface (no traffic is sent) and waiting for the
master's rendezvous (over loopback)."""

import shutil
import socket
import subprocess
import threading
import time

import pytest

from chargpt.distributed import DistributedError, configure_socket_interfaces, read_env
from chargpt.network import local_ipv4_addresses, pick_interface, wait_for_listener


def test_single_process_without_torchrun_variables():
    env = read_env({})
    assert (env.rank, env.world_size, env.is_distributed, env.is_main) == (0, 1, False, True)


def test_reads_the_torchrun_environment():
    env = read_env({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "node1", "MASTER_PORT": "29501"})
    assert (env.rank, env.local_rank, env.world_size, env.local_world_size, env.master_addr,
            env.master_port) == (3, 1, 4, 2, "node1", 29501)
    assert not env.is_main


@pytest.mark.parametrize("environ, message", [
    ({"WORLD_SIZE": "2"}, "RANK is not set"),
    ({"WORLD_SIZE": "2", "RANK": "two"}, "RANK='two' is not an integer"),
    ({"WORLD_SIZE": "2", "RANK": "2"}, "RANK=2 is not within WORLD_SIZE=2"),
])
def test_bad_torchrun_environment(environ, message):
    with pytest.raises(DistributedError, match=message):
        read_env(environ)


def test_loopback_master_uses_the_interface_holding_127_0_0_1():
    name, reason = pick_interface("127.0.0.1")
    assert name == "lo"
    assert "holds 127.0.0.1" in reason


def test_master_uses_the_interface_holding_its_own_address_not_lo():
    """`ip route get <own address>` answers lo; the interface that holds it is the right one."""
    own = {address: name for address, name in local_ipv4_addresses().items() if name != "lo"}
    if not own:
        pytest.skip("this host has no IPv4 address outside loopback")
    address, holder = next(iter(own.items()))
    assert pick_interface(address)[0] == holder


def test_worker_uses_the_interface_of_the_route_to_the_master():
    if not shutil.which("ip"):
        pytest.skip("the ip command is not installed")
    target = "198.51.100.7"  # TEST-NET-2: a route lookup only, nothing is sent
    route = subprocess.run(["ip", "-o", "-4", "route", "get", target], capture_output=True, text=True)
    if route.returncode != 0:
        pytest.skip(f"no route to {target} on this host")
    words = route.stdout.split()
    expected = words[words.index("dev") + 1]
    name, reason = pick_interface(target)
    assert name == expected
    assert "routes to 198.51.100.7" in reason


@pytest.mark.parametrize("environ, expected", [
    ({}, ("lo", "lo")),
    ({"GLOO_SOCKET_IFNAME": "auto"}, ("lo", "lo")),
    ({"GLOO_SOCKET_IFNAME": "eth7"}, ("eth7", "eth7")),
    ({"NCCL_SOCKET_IFNAME": "ib0"}, ("lo", "ib0")),
    ({"GLOO_SOCKET_IFNAME": "eth7", "NCCL_SOCKET_IFNAME": "=ib0"}, ("eth7", "=ib0")),
], ids=["unset", "auto", "gloo set", "nccl set", "both set"])
def test_gloo_and_nccl_use_the_interface_toward_the_master_unless_set(environ, expected):
    """Whatever the network (the overlay or the hosts' own), both libraries talk over the interface
    that reaches MASTER_ADDR; a name the environment gives wins."""
    lines = []
    configure_socket_interfaces(read_env({"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1"}), lines.append,
                                environ=environ)
    assert (environ["GLOO_SOCKET_IFNAME"], environ["NCCL_SOCKET_IFNAME"]) == expected
    assert len(lines) == 2, lines


def test_a_worker_finds_a_master_that_starts_listening_late():
    """The master's rendezvous comes up 1.5 s after the worker started to wait: found within a try
    (a second), with the reason for the wait said first."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        threading.Timer(1.5, server.listen).start()
        lines: list[str] = []
        started = time.monotonic()
        assert wait_for_listener("127.0.0.1", port, timeout_s=10, log=lines.append, interval_s=0.2)
        waited = time.monotonic() - started
    assert 1.4 < waited < 2.5, waited
    assert lines[0].startswith(f"waiting for the master's rendezvous at 127.0.0.1:{port} (0 s of 10): "), lines
    assert lines[-1] == f"the master's rendezvous at 127.0.0.1:{port} answers after 2 s", lines


def test_a_worker_gives_up_on_a_master_that_never_answers():
    lines: list[str] = []
    with socket.socket() as closed:  # bound, never listening: every connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        started = time.monotonic()
        assert not wait_for_listener("127.0.0.1", port, timeout_s=1, log=lines.append, interval_s=0.2)
    assert 1 <= time.monotonic() - started < 3
    assert lines == [f"waiting for the master's rendezvous at 127.0.0.1:{port} (0 s of 1): Connection refused"]
