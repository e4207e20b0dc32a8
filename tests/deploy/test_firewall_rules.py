"""The swarm firewall's rules, rendered by the swarm role's template with its own sources: every host
of the cluster is let in, the hosts that a --limit leaves out of the run too."""

from __future__ import annotations

import re
from pathlib import Path

from .helpers import local_inventory, output, run_playbook

HOSTS = ["node1", "node2", "node3"]
# How each host's address is given: an IPv4 ansible_host (node1, node3), or swarm_advertise_addr over
# an ansible_host that is a name (node2). A local connection never uses ansible_host.
ADDRESSES = {"node1": {"ansible_host": "198.51.100.11"},
             "node2": {"ansible_host": "node2.example", "swarm_advertise_addr": "198.51.100.22"},
             "node3": {"ansible_host": "198.51.100.13"}}
EXTRA = ["10.0.0.0/24"]


def render(tmp_path: Path, *args: str, addresses: dict = ADDRESSES) -> dict[str, set[str]]:
    """{host: the addresses its rules let in} for the hosts whose rules the run wrote."""
    out = tmp_path / "rules"
    out.mkdir()
    host_vars = {name: {**addresses.get(name, {}), "swarm_firewall_rules_path": str(out / f"{name}.nft")}
                 for name in HOSTS}
    inventory = local_inventory(tmp_path / "hosts.yml", HOSTS[:1], HOSTS[1:], host_vars=host_vars,
                                group_vars={"swarm_firewall": True, "swarm_firewall_extra_sources": EXTRA})
    result = run_playbook("tests/deploy/render_firewall.yml", inventory, *args)
    assert result.returncode == 0, output(result)
    allowed = {}
    for file in out.glob("*.nft"):
        [elements] = re.findall(r"elements = \{ (.*) \}", file.read_text())
        allowed[file.stem] = set(elements.split(", "))
    return allowed


def test_rules_let_in_every_cluster_host(tmp_path):
    allowed = render(tmp_path)
    assert allowed == {name: {"198.51.100.11", "198.51.100.22", "198.51.100.13", *EXTRA} for name in HOSTS}


def test_rules_let_in_the_hosts_a_limit_leaves_out(tmp_path):
    allowed = render(tmp_path, "--limit", "node1")
    assert allowed == {"node1": {"198.51.100.11", "198.51.100.22", "198.51.100.13", *EXTRA}}
