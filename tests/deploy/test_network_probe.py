"""The network probe's filters: its table, and every figure past its limit named with its hosts."""

from __future__ import annotations

import copy
import importlib.util

import pytest

from harness import REPO

_spec = importlib.util.spec_from_file_location("network_probe",
                                               REPO / "roles/network_probe/filter_plugins/network_probe.py")
network_probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(network_probe)


def peer(name, rtt=0.21, mtu_ok=True, error=None):
    return {"peer": f"chargpt-probe-{name}", "address": "10.0.1.3", "rtt_ms": rtt, "rtt_max_ms": rtt and rtt * 2,
            "lost": 0 if rtt else 20, "mtu": 1450, "mtu_ok": mtu_ok, "error": error}


def host(peers: dict, used="eth0", routed="eth0", closed=()):
    return {"peers": peers, "ports_checked": ["172.18.0.3:7946", "172.18.0.2:2377"], "ports_closed": list(closed),
            "interface": {"master": "chargpt-probe-00000", "routed": routed, "configured": "auto" if used == routed
                          else used, "used": used, "reaches_master": used == routed, "mtu": 1450}}


HEALTHY = {
    "run_id": "r1", "limits": {"max_rtt_ms": "50.0", "min_bus_bandwidth_mb_s": 10.0},
    "hosts": {"node1": host({"node2": peer("00001")}), "node2": host({"node1": peer("00000", rtt=0.35)})},
    "allreduce": {"world_size": 2, "bytes": 3272704, "iterations": 10, "time_ms": 12.5, "bus_bandwidth_mb_s": 261.8},
    "allreduce_error": "",
}


def test_table_has_a_row_per_host_pair_with_figures_and_a_row_per_host():
    lines = network_probe.probe_table(HEALTHY)
    assert lines[0] == "network probe before run r1: 2 hosts, over the overlay"
    assert network_probe.probe_table(dict(HEALTHY, network="host"))[0] == (
        "network probe before run r1: 2 hosts, over the hosts' own network")
    assert lines[1].split()[:4] == ["from", "to", "rtt", "ms"]
    assert lines[2].split() == ["node1", "node2", "0.210", "0.420", "0", "1450", "ok"]
    assert lines[3].split() == ["node2", "node1", "0.350", "0.700", "0", "1450", "ok"]
    assert lines[5].split() == ["node1", "eth0", "(auto)", "yes", "2/2"]
    assert "all-reduce of 3.3 MB (the run's gradients) across 2 hosts: 12.5 ms, bus bandwidth 261.8 MB/s" in lines
    assert lines[-1] == "limits: round trip <= 50 ms, bus bandwidth >= 10 MB/s, full-MTU datagrams cross"


def test_a_healthy_network_has_no_problems():
    assert network_probe.probe_problems(HEALTHY) == []


def broken(change) -> dict:
    results = copy.deepcopy(HEALTHY)
    change(results)
    return results


@pytest.mark.parametrize("change, problem", [
    (lambda r: r["hosts"]["node1"]["peers"].update(node2=peer("00001", rtt=None, mtu_ok=False,
                                                               error="no echo from chargpt-probe-00001")),
     "node1 -> node2: no echo from chargpt-probe-00001"),
    (lambda r: r["hosts"]["node2"]["peers"]["node1"].update(mtu_ok=False),
     "node2 -> node1: a datagram of the overlay's full MTU (1450 bytes) did not cross"),
    (lambda r: r["limits"].update(max_rtt_ms=0.3),
     "node2 -> node1: round trip 0.350 ms, above the limit of 0.3 ms"),
    (lambda r: r["hosts"].update(node2=host({"node1": peer("00000")}, used="eth1", routed="eth0")),
     "node2: GLOO_SOCKET_IFNAME=eth1 is not the interface that reaches the master (eth0)"),
    (lambda r: r["hosts"]["node2"]["ports_closed"].append("172.18.0.2:2377"),
     "node2 -> 172.18.0.2:2377/tcp (swarm) does not answer"),
    (lambda r: r["limits"].update(min_bus_bandwidth_mb_s=1000),
     "the all-reduce across node1, node2: bus bandwidth 261.8 MB/s, below the limit of 1000 MB/s"),
    (lambda r: r.update(allreduce=None, allreduce_error="RuntimeError: Connection refused"),
     "the all-reduce across node1, node2 did not complete: RuntimeError: Connection refused"),
])
def test_each_figure_past_its_limit_names_its_hosts(change, problem):
    problems = network_probe.probe_problems(broken(change))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_one_host_has_no_pairs_and_no_all_reduce_to_miss():
    results = {"run_id": "r1", "limits": HEALTHY["limits"], "hosts": {"node1": host({})}, "allreduce": None}
    assert network_probe.probe_problems(results) == []
    assert not any("all-reduce" in line for line in network_probe.probe_table(results))
