"""Teardown, the two-host lab's last scenario (after the fault cases, which keep deploying onto the
converged lab): no trainer, anchor, probe or overlay network is left on any host of the lab as the
fault cases left it, and the artifacts fetched to the control node stay. Only against the lab."""

from __future__ import annotations

from harness.playbook import assert_succeeded

from .cluster import RUN_ID_LABEL, Cluster
from .lab import RUN_ID


def test_teardown_leaves_no_trainer_or_network(lab, artifacts_dir):
    cluster = Cluster(lab.inventory)
    network = cluster.overlay_network
    assert_succeeded(lab.playbook("playbooks/teardown.yml", log_name="teardown"))
    for name in cluster.names:
        leftovers = cluster.sh(name, "docker ps -a --format '{{.Names}}' --filter %s", f"label={RUN_ID_LABEL}").split()
        leftovers += cluster.sh(name, "docker ps -a --format '{{.Names}}' --filter %s",
                                "label=com.docker.compose.project").split()
        leftovers += cluster.sh(name, "docker ps -a --format '{{.Names}}' --filter %s", "label=org.chargpt.role").split()
        assert not leftovers, f"{name}: containers left after teardown: {sorted(set(leftovers))}"
        networks = cluster.sh(name, "docker network ls --format '{{.Name}}'").split()
        assert network not in networks, f"{name}: network {network} left after teardown"
    assert (artifacts_dir / RUN_ID / "model.pt").is_file(), "teardown removed the fetched artifacts"
