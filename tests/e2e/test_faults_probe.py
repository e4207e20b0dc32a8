"""On the fault lab's two hosts: the network probe measures every pair and stops a deployment whose
network is below its limits, before any trainer starts. (The other deployments of the suite skip the
probe but the two-host lab's first one.)"""

from __future__ import annotations

import json
import re

from .cluster import RUN_ID_LABEL
from .fault_lab import run_vars


def test_the_probe_measures_every_pair_and_stops_a_deployment_below_its_limits(fault_lab):
    run_id = f"faults-probe-limits-{fault_lab.session_tag}"
    # Replacing a run that may still train (after a failed case) happens only after the probe passed.
    limits = {"network_probe_max_rtt_ms": 0.0001, "network_probe_min_bus_bandwidth_mb_s": 1e9,
              "trainer_replace_running": True}
    playbook = fault_lab.lab.playbook("site.yml", "--tags", "trainer", "-e",
                                      json.dumps({**run_vars(run_id, {"max_steps": 20}), **limits}),
                                      log_name="faults-probe-limits", network_probe=True)
    assert playbook.returncode != 0, f"site.yml passed a network below the probe's limits (log {playbook.log})"
    first, second = fault_lab.cluster().names
    for source, target in ((first, second), (second, first)):
        row = re.search(rf"{source}\s+{target}\s+([\d.]+)\s+([\d.]+)\s+0\s+(\d+)\s+ok", playbook.text)
        assert row, f"no probe row {source} -> {target} with figures (log {playbook.log}):\n{playbook.tail(40)}"
        assert 0 < float(row[1]) <= float(row[2]) and int(row[3]) >= 1280, row[0]
        assert f"{source} -> {target}: round trip" in playbook.text and "above the limit of 0.0001 ms" in playbook.text
    assert re.search(rf"the all-reduce across {first}, {second}: bus bandwidth [\d,.]+ MB/s, below the limit",
                     playbook.text), playbook.tail(40)
    assert re.search(r"all-reduce of [\d.]+ MB \(the run's gradients\) across 2 hosts", playbook.text)
    cluster = fault_lab.cluster()
    started = [container.name for host in cluster.names for container in cluster.trainer_containers(host)
               if container.labels.get(RUN_ID_LABEL) == run_id]
    assert not started, f"trainers started although the probe failed: {started}"
