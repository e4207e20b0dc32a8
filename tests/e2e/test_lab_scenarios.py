"""Scenarios that change the lab, in order: a second run changes nothing, a check run reports
nothing (also with the run's artifacts not fetched yet), a run from an external registry trains,
a third host joins and the run resumes at world size 3, that host leaves the inventory
and the run resumes at world size 2 (its swarm node removed, the join tokens rotated), teardown
leaves nothing behind.
They run after test_cluster.py (same session lab) and only against the lab, never --inventory."""

from __future__ import annotations

import json
import shutil
import time

from harness.inventory import Inventory
from harness.playbook import assert_nothing_changed, assert_succeeded
from harness.roles import role_task_names

from .checks import ARTIFACT_CHECKS, CHECKS, check_trainers_exited_zero, check_world_size
from .cluster import INVENTORY_HOST_LABEL, RUN_ID_LABEL, Cluster
from .lab import RUN_ID, TRAIN_OVERRIDES


def rank0_started_at(cluster: Cluster) -> str:
    return cluster.rank0_container().raw["State"]["StartedAt"]


def test_second_run_changes_nothing(lab):
    cluster = Cluster(lab.inventory)
    started_at = rank0_started_at(cluster)
    # --diff: when something does change, the log shows what.
    run = lab.playbook("site.yml", "--diff", log_name="site-second-run")
    assert_nothing_changed(run)
    assert rank0_started_at(cluster) == started_at, "the second run restarted the finished trainer"
    # Every host holds the image: the registry serves nobody, so none of its tasks runs.
    registry_tasks = set(role_task_names("trainer", "registry.yml")) & run.ran_tasks()
    assert not registry_tasks, f"the registry's tasks ran with the image on every host: {sorted(registry_tasks)}"


def test_check_mode_reports_no_change(lab):
    assert_nothing_changed(lab.playbook("site.yml", "--check", "--diff", log_name="site-check-diff"))


def test_check_mode_on_a_finished_run_not_fetched_yet(lab, artifacts_dir):
    """--check fetches nothing: with the run's artifacts not on the control node, it says so and
    changes nothing instead of failing on the missing summary."""
    fetched = artifacts_dir / RUN_ID
    aside = fetched.with_name(f".{RUN_ID}-aside")
    fetched.rename(aside)
    try:
        run = lab.playbook("site.yml", "--check", log_name="site-check-unfetched")
        assert_nothing_changed(run)
        assert "--check fetches nothing" in run.text, f"no word on the missing artifacts (log {run.log})"
        assert not fetched.exists(), "--check put artifacts on the control node"
    finally:
        if fetched.exists():
            shutil.rmtree(fetched)
        aside.rename(fetched)


def test_an_external_registry_serves_the_image(lab):
    """trainer_image_distribution external (trainer_image_registry and trainer_image_tag set): every
    host pulls <registry>/<trainer_image_name>:<tag> and trains with it, and nothing is pushed. The
    cluster's registry on the first manager stands in for an external one (every host trusts it
    already); the second host has lost its tags first, so it really pulls."""
    cluster = Cluster(lab.inventory)
    first, second = cluster.names[:2]
    name, tag = cluster.rank0_container().raw["Config"]["Image"].rsplit(":", 1)
    port = cluster.setting(first, "trainer", "trainer_registry_port")
    registry = f"{cluster.sh(first, 'docker info --format %s', '{{.Swarm.NodeAddr}}').strip()}:{port}"
    external = f"{registry}/{name}:{tag}"
    cluster.sh(second, "docker rmi -f %s %s", f"{name}:{tag}", external)
    run_id = f"{RUN_ID}-external"
    run = lab.playbook("site.yml", "-e", json.dumps({"trainer_image_registry": registry, "trainer_image_tag": tag,
                                                     "trainer_run_id": run_id}), log_name="site-external-registry")
    assert_succeeded(run)
    assert not [task for task in run.changed_tasks() if "Push the image" in task], "it pushed to the cluster's registry"
    for host in cluster.names:
        trainer = cluster.trainer_container(host)
        assert trainer.labels[RUN_ID_LABEL] == run_id, f"{host}: {trainer.labels}"
        assert trainer.raw["Config"]["Image"] == external, f"{host} ran {trainer.raw['Config']['Image']}"
        assert trainer.raw["State"]["ExitCode"] == 0, f"{host}: the trainer exited {trainer.raw['State']['ExitCode']}"
    assert cluster.sh(second, "docker images -q %s", external).strip(), f"{second} did not pull {external}"


def test_added_host_joins_and_run_resumes(lab, artifacts_dir):
    """The re-run also raises max_steps, so that the world of three really trains after resuming."""
    summary_file = artifacts_dir / RUN_ID / "summary.json"
    before = json.loads(summary_file.read_text())
    assert before["world_size"] == 2, f"the first run's summary: {before}"
    more_steps = dict(TRAIN_OVERRIDES, max_steps=TRAIN_OVERRIDES["max_steps"] + 40)

    lab.command("add")
    run = lab.playbook("site.yml", "-e", json.dumps({"trainer_overrides": more_steps,
                                                     "trainer_allow_config_change": ["max_steps"]}),
                       log_name="site-third-host")
    assert_succeeded(run)

    cluster = Cluster(lab.inventory)
    assert len(cluster) == 3, f"{lab.inventory} has {cluster.names} after `lab/lab add`"
    joined = cluster.names[-1]
    assert f"trainer : Pull the image from the registry: {joined}" in run.changed_tasks(), (
        f"{joined} did not pull the image from the cluster's registry (log {run.log})")
    assert "trainer : Wait until the registry answers over mutual TLS" in run.ran_tasks(), run.log
    for check in CHECKS:
        check(cluster)
    for check in ARTIFACT_CHECKS:
        check(cluster, artifacts_dir)
    after = json.loads(summary_file.read_text())
    assert after["world_size"] == 3, f"summary after adding a host: {after}"
    assert after["final_step"] == more_steps["max_steps"], f"summary after adding a host: {after}"
    assert after["resumed_from_step"] == before["final_step"], (
        f"the run did not resume from its last checkpoint (step {before['final_step']}): {after}")
    rank0 = cluster.rank0_container()
    assert f"resumed from step {before['final_step']}" in cluster.logs(rank0.host, rank0.name), (
        f"{rank0.name}'s log does not say 'resumed from step {before['final_step']}'")


def wait_until_stopped(cluster: Cluster, name: str, timeout: float = 90) -> None:
    """Until name's trainer container no longer runs (a worker can end a moment after rank 0)."""
    deadline = time.monotonic() + timeout
    while (state := cluster.trainer_container(name).raw["State"])["Running"] or state["Restarting"]:
        assert time.monotonic() < deadline, f"{name}: the trainer still runs {timeout:.0f} s after the run ended"
        time.sleep(2)


def test_removed_host_leaves_and_run_resumes(lab, artifacts_dir, tmp_path):
    """The third host leaves the inventory but stays up, and its trainer is started again with the
    old world size, as a host that missed the change would: the two hosts left train on at world
    size 2 from the last checkpoint, and the stray trainer cannot take a place in their group."""
    summary_file = artifacts_dir / RUN_ID / "summary.json"
    before = json.loads(summary_file.read_text())
    assert before["world_size"] == 3, f"the summary before the host left: {before}"
    lab_cluster = Cluster(lab.inventory)
    leaving = lab_cluster.names[-1]
    lab_cluster.sh(leaving, "docker start %s", lab_cluster.trainer_container(leaving).name)
    more_steps = dict(TRAIN_OVERRIDES, max_steps=before["final_step"] + 40)

    # The lab's inventory (group_vars inlined) without the leaving host.
    inventory = Inventory.read(lab.inventory).without(leaving).write(tmp_path / "hosts.yml")
    assert_succeeded(lab.playbook("site.yml", "-e",
                                  json.dumps({"trainer_overrides": more_steps, "trainer_allow_config_change": ["max_steps"],
                                              "trainer_wait_timeout_s": 600}),
                                  log_name="site-host-removed", inventory=inventory))

    after = json.loads(summary_file.read_text())
    assert after["world_size"] == 2, f"summary after the host left: {after}"
    assert after["final_step"] == more_steps["max_steps"], f"summary after the host left: {after}"
    assert after["resumed_from_step"] == before["final_step"], (
        f"the run did not resume from its last checkpoint (step {before['final_step']}): {after}")
    cluster = Cluster(inventory)
    for name in cluster.names:
        wait_until_stopped(cluster, name)
    check_trainers_exited_zero(cluster)
    check_world_size(cluster)
    stray_after = lab_cluster.trainer_container(leaving).raw["State"]
    assert stray_after["Running"] or stray_after["ExitCode"] != 0, (
        f"the stray trainer on {leaving} (NNODES=3) finished a run after its host left: {stray_after}")

    # Teardown takes the leaving host's node out of the swarm, and then no join token its host may
    # have kept works any more.
    tokens_before = join_tokens(cluster)
    assert_succeeded(lab.playbook("playbooks/teardown.yml", "--tags", "swarm", log_name="teardown-prune",
                                  inventory=inventory))
    ids = cluster.sh(cluster.first_manager, "docker node ls -q").split()
    nodes = [(node["Spec"].get("Labels") or {}).get(INVENTORY_HOST_LABEL)
             for node in cluster.docker_json(cluster.first_manager, "node", "inspect", *ids)]
    assert leaving not in nodes, f"{leaving}'s node is still in the swarm: {nodes}"
    tokens_after = join_tokens(cluster)
    assert all(tokens_after[role] != tokens_before[role] for role in tokens_before), (
        "the join tokens were not rotated after a node was removed")
    # The host that left still believes it belongs to the swarm until it leaves, as its operator
    # makes it do; teardown then removes the copy of the overlay it kept (the last scenario).
    lab_cluster.sh(leaving, "docker swarm leave --force")


def join_tokens(cluster: Cluster) -> dict[str, str]:
    """The swarm's current join tokens, read on the first manager (they stay in this test)."""
    return {role: cluster.sh(cluster.first_manager, "docker swarm join-token --quiet %s", role).strip()
            for role in ("worker", "manager")}


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
