"""Scenarios that change the lab, in order: a second run changes nothing, a check run reports
nothing (with the run's artifacts not fetched yet, which it does not fetch), an image from an
external registry takes the finished run on by an allowed change of max_steps, teardown leaves
nothing behind. (A host that joins and leaves a run is fault case 10a, on the same lab:
test_faults_replicas.py.) They run after test_cluster.py (same session lab) and only against the
lab, never --inventory."""

from __future__ import annotations

import json
import shutil

from harness.playbook import assert_nothing_changed, assert_succeeded

from .checks import ARTIFACT_CHECKS
from .cluster import RUN_ID_LABEL, Cluster
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
    registry_tasks = {task for task in run.ran_tasks() if task.startswith("image_registry : ")}
    assert not registry_tasks, f"the registry's tasks ran with the image on every host: {sorted(registry_tasks)}"


def test_check_mode_reports_no_change_and_fetches_nothing(lab, artifacts_dir):
    """--check --diff on the converged lab reports nothing, with the finished run's artifacts not on
    the control node: --check fetches nothing, says so, and does not fail on the missing summary."""
    fetched = artifacts_dir / RUN_ID
    aside = fetched.with_name(f".{RUN_ID}-aside")
    fetched.rename(aside)
    try:
        run = lab.playbook("site.yml", "--check", "--diff", log_name="site-check-diff")
        assert_nothing_changed(run)
        assert "--check fetches nothing" in run.text, f"no word on the missing artifacts (log {run.log})"
        assert not fetched.exists(), "--check put artifacts on the control node"
    finally:
        if fetched.exists():
            shutil.rmtree(fetched)
        aside.rename(fetched)


def test_an_external_registry_serves_the_image_and_a_finished_run_goes_on(lab, artifacts_dir):
    """trainer_image_distribution external (trainer_image_registry and trainer_image_tag set): every
    host pulls <registry>/<trainer_image_name>:<tag> and trains with it, and nothing is pushed. The
    cluster's registry on the first manager stands in for an external one (every host trusts it
    already); the second host has lost its tags first, so it really pulls. The same run raises the
    finished run's max_steps (an allowed change), so the run resumes from its last step and trains on."""
    summary_file = artifacts_dir / RUN_ID / "summary.json"
    before = json.loads(summary_file.read_text())
    more_steps = dict(TRAIN_OVERRIDES, max_steps=before["final_step"] + 40)
    cluster = Cluster(lab.inventory)
    first, second = cluster.names[:2]
    name, tag = cluster.rank0_container().raw["Config"]["Image"].rsplit(":", 1)
    port = cluster.setting(first, "image_registry", "image_registry_port")
    registry = f"{cluster.sh(first, 'docker info --format %s', '{{.Swarm.NodeAddr}}').strip()}:{port}"
    external = f"{registry}/{name}:{tag}"
    cluster.sh(second, "docker rmi -f %s %s", f"{name}:{tag}", external)
    run = lab.playbook("site.yml", "-e", json.dumps({"trainer_image_registry": registry, "trainer_image_tag": tag,
                                                     "trainer_overrides": more_steps,
                                                     "trainer_allow_config_change": ["max_steps"]}),
                       log_name="site-external-registry")
    assert_succeeded(run)
    assert not [task for task in run.changed_tasks() if "Push the image" in task], "it pushed to the cluster's registry"
    for host in cluster.names:
        trainer = cluster.trainer_container(host)
        assert trainer.labels[RUN_ID_LABEL] == RUN_ID, f"{host}: {trainer.labels}"
        assert trainer.raw["Config"]["Image"] == external, f"{host} ran {trainer.raw['Config']['Image']}"
        assert trainer.raw["State"]["ExitCode"] == 0, f"{host}: the trainer exited {trainer.raw['State']['ExitCode']}"
    assert cluster.sh(second, "docker images -q %s", external).strip(), f"{second} did not pull {external}"

    after = json.loads(summary_file.read_text())
    assert (after["world_size"], after["final_step"]) == (2, more_steps["max_steps"]), f"summary after the change: {after}"
    assert after["resumed_from_step"] == before["final_step"], (
        f"the run did not resume from its last checkpoint (step {before['final_step']}): {after}")
    rank0 = cluster.rank0_container()
    assert f"resumed from step {before['final_step']}" in cluster.logs(rank0.host, rank0.name), (
        f"{rank0.name}'s log does not say 'resumed from step {before['final_step']}'")
    for check in ARTIFACT_CHECKS:
        check(cluster, artifacts_dir)


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
