"""The cluster role derives each host's place (playbooks/layout.yml) as the inventory describes it:
node ranks in inventory order or as set per host, the world size, the container names, the managers
and the overlay. The e2e checks judge a deployed cluster against the same reading of its inventory
(harness.inventory.Layout), which does not go through the role."""

from __future__ import annotations

import pytest

from harness.inventory import Layout
from harness.roles import layout

from .helpers import local_inventory

INVENTORIES = {
    "inventory order": dict(master=["node1"], workers=["node2", "node3"]),
    "ranks set per host": dict(master=["node1"], workers=["node2", "node3"],
                               host_vars={"node2": {"cluster_node_rank": 2}, "node3": {"cluster_node_rank": 1}}),
    "two processes per host, another name": dict(master=["node1"], workers=["node2"], managers=["node1", "node2"],
                                                 group_vars={"cluster_nproc_per_node": 2, "cluster_name": "gpt",
                                                             "cluster_overlay_network": "train-net"}),
}


@pytest.mark.parametrize("case", INVENTORIES)
def test_the_role_derives_what_the_inventory_says(case, tmp_path):
    inventory = local_inventory(tmp_path / "hosts.yml", **INVENTORIES[case])
    expected, derived = Layout.read(inventory), layout(inventory)
    assert sorted(derived) == sorted(expected.ranks)
    for host, place in derived.items():
        assert int(place["node_rank"]) == expected.ranks[host], (host, place)
        assert int(place["world_size"]) == expected.world_size, (host, place)
        assert int(place["nproc_per_node"]) == expected.nproc_per_node, (host, place)
        assert place["trainer_container"] == expected.trainer_container(host), (host, place)
        assert place["managers"] == expected.managers and place["first_manager"] == expected.managers[0], place
        assert place["overlay_network"] == expected.overlay_network, place
        assert place["master"] == min(expected.ranks, key=expected.ranks.get), place
