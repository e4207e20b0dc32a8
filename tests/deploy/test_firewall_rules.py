"""The swarm firewall's rules, rendered by the swarm role's template with its own sources: every host
of the cluster is let in, the hosts that a --limit leaves out of the run too."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .helpers import local_inventory, output, run_playbook

HOSTS = ["node1", "node2", "node3"]
# How each host's address is given: an IPv4 ansible_host (node1, node3), or swarm_advertise_addr over
# an ansible_host that is a name (node2). A local connection never uses ansible_host.
ADDRESSES = {"node1": {"ansible_host": "198.51.100.11"},
             "node2": {"ansible_host": "node2.example", "swarm_advertise_addr": "198.51.100.22"},
             "node3": {"ansible_host": "198.51.100.13"}}
EXTRA = ["10.0.0.0/24"]


def render_files(tmp_path: Path, *args: str, addresses: dict = ADDRESSES, **group_vars) -> dict[str, str]:
    """{host: its rules file} for the hosts whose rules the run wrote."""
    out = tmp_path / "rules"
    out.mkdir()
    host_vars = {name: {**addresses.get(name, {}), "swarm_firewall_rules_path": str(out / f"{name}.nft")}
                 for name in HOSTS}
    inventory = local_inventory(tmp_path / "hosts.yml", HOSTS[:1], HOSTS[1:], host_vars=host_vars,
                                group_vars={"swarm_firewall": True, "swarm_firewall_extra_sources": EXTRA,
                                            **group_vars})
    result = run_playbook("tests/deploy/render_firewall.yml", inventory, *args)
    assert result.returncode == 0, output(result)
    return {file.stem: file.read_text() for file in out.glob("*.nft")}


def render(tmp_path: Path, *args: str, addresses: dict = ADDRESSES) -> dict[str, set[str]]:
    """{host: the addresses its rules let in} for the hosts whose rules the run wrote."""
    allowed = {}
    for name, rules in render_files(tmp_path, *args, addresses=addresses).items():
        [elements] = re.findall(r"elements = \{ (.*) \}", rules)
        allowed[name] = set(elements.split(", "))
    return allowed


def test_rules_let_in_every_cluster_host(tmp_path):
    allowed = render(tmp_path)
    assert allowed == {name: {"198.51.100.11", "198.51.100.22", "198.51.100.13", *EXTRA} for name in HOSTS}


def test_rules_let_in_the_hosts_a_limit_leaves_out(tmp_path):
    allowed = render(tmp_path, "--limit", "node1")
    assert allowed == {"node1": {"198.51.100.11", "198.51.100.22", "198.51.100.13", *EXTRA}}


def dropped_ports(rules: str) -> dict[str, str]:
    """{protocol rule's start: the ports it drops from outside the cluster}, IPv4 rules only."""
    return {match[0]: match[1] for match in re.findall(r"meta nfproto ipv4 ((?:ct state new )?(?:tcp|udp)) dport "
                                                        r"\{ ([^}]*) \} ip saddr != @cluster_hosts drop", rules)}


@pytest.mark.parametrize("network", ["overlay", "host"])
def test_the_host_network_keeps_the_trainers_ports_to_the_cluster(tmp_path, network):
    """With cluster_network host the rendezvous port and the ephemeral range (Gloo's and the stores'
    listening ports) take new connections from the cluster's hosts only; the overlay adds nothing.
    nft itself parses the file, where it is installed (in a network namespace of its own: nothing is loaded)."""
    files = render_files(tmp_path, cluster_network=network, cluster_master_port=29600,
                         swarm_firewall_host_network_ports=["29400", "32768-60999"])
    expected = {"tcp": "2377, 7946", "udp": "7946, 4789"}
    if network == "host":
        expected.update({"ct state new tcp": "29600, 29400, 32768-60999", "ct state new udp": "29400, 32768-60999"})
    for name, rules in files.items():
        assert dropped_ports(rules) == expected, rules
        if shutil.which("nft") and shutil.which("unshare"):
            path = tmp_path / "rules" / f"{name}.nft"
            checked = subprocess.run(["unshare", "--net", "nft", "--check", "--file", str(path)],
                                     capture_output=True, text=True)
            assert checked.returncode == 0 or "Operation not permitted" in checked.stderr, checked.stderr
