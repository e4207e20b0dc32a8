"""Fault injection in a lab of its own (issue 5): processes and containers killed, a peer paused past
the collective timeout, site.yml re-run mid-run, bad inventories and corpora, a host that drops out
while it is provisioned. Each case asserts the outcome and records what it cost (progress lost, time
to recover) in artifacts/reliability/faults.json; docs/RELIABILITY.md is rendered from it when every
case ran.

The cases share one lab (E2E_FAULTS_LAB_NAME, default e2e-faults), separate from the session lab of
test_lab_scenarios.py because they deploy with other variables. Each run case starts a run of its
own (its own run id); the cases run in file order, the one that adds a third host last."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from .cluster import Cluster
from .faults import (CHECKPOINT_LINE, RESULTS_FILE, CaseResult, FaultRun, Results, now, on_host,
                     seconds_between, snapshot, snapshot_differences, start_run)
from .lab import KEEP_LAB, LOG_DIR, REPO, Lab, PlaybookRun, assert_succeeded, run_playbook, timed
from .reliability import DOC_FILE, render

LAB_NAME = os.environ.get("E2E_FAULTS_LAB_NAME", "e2e-faults")
PRESET = "smoke"
# The smoke model with a bigger batch and context: about 60 ms a step on 2 cores, so that a fault
# lands mid-run at a step the test chose. Every step is logged, for the progress-lost figure.
FAULT_OVERRIDES = {"max_steps": 300, "log_interval": 1, "checkpoint_interval": 50, "eval_interval": 100,
                   "batch_size": 48, "block_size": 64}
CHECKPOINT_INTERVAL = FAULT_OVERRIDES["checkpoint_interval"]
# Where the faults land: between the checkpoints of steps 50 and 100.
INJECT_AFTER_STEP = 75
# Runs that must outlast a playbook run (the re-run case, the unreachable host case).
LONG_OVERRIDES = dict(FAULT_OVERRIDES, max_steps=2000, log_interval=10, checkpoint_interval=500,
                      eval_interval=500)
BASE_RUN = {"run_id": "faults-base", "overrides": {"max_steps": 20, "eval_interval": 10, "checkpoint_interval": 10}}
DIST_TIMEOUT_S = 20
# How much later than dist_timeout_s after the pause rank 0 may report the timeout.
TIMEOUT_MARGIN_S = 15
CHECKPOINT_PAUSE_S = 45
EXPECTED_CASES = ["1", "2", "3", "4", "5", "6a", "6b", "6c", "6d", "6e", "6f", "6g", "6h", "6i", "6j", "7"]


def run_vars(run_id: str, overrides: dict, wait: bool = False, environment: dict | None = None) -> dict:
    return {"trainer_preset": PRESET, "trainer_run_id": run_id, "trainer_wait": wait, "trainer_overrides": overrides,
            "trainer_environment": environment or {}}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal:"))
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True)
    os_name = next((line.split("=", 1)[1].strip('"') for line in Path("/etc/os-release").read_text().splitlines()
                    if line.startswith("PRETTY_NAME=")), platform.system())
    return {"os": os_name, "kernel": platform.release(), "cpus": os.cpu_count(), "cpu_model": cpu,
            "memory_gib": round(memory_kb / 2**20, 1), "docker_engine": docker.stdout.strip() or "unknown",
            "python": platform.python_version()}


def source_commit() -> str:
    """The commit the suite ran on, marked when the working tree differed from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                           text=True)
    return (head.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty.stdout.strip() else "")


def role_default(name: str):
    return yaml.safe_load((REPO / "roles" / "trainer" / "defaults" / "main.yml").read_text())[name]


class FaultLab:
    def __init__(self, lab: Lab, results: Results, session_tag: str):
        self.lab, self.results, self.session_tag = lab, results, session_tag

    def cluster(self) -> Cluster:
        return Cluster(self.lab.inventory)

    def start(self, name: str, overrides: dict, environment: dict | None = None) -> FaultRun:
        """Start a fresh run: its id carries the session's tag, so that a kept lab never holds it finished."""
        run_id = f"{name}-{self.session_tag}"
        start_run(self.lab, run_vars(run_id, overrides, environment=environment), log_name=f"faults-start-{name}")
        run = FaultRun(self.lab, self.cluster(), run_id, overrides["max_steps"])
        container = run.container(run.master)
        running = on_host(run.master, "docker", "inspect", "--format",
                          '{{index .Config.Labels "org.chargpt.run-id"}} {{.State.Status}}', container).stdout.split()
        assert running == [run_id, "running"], f"{container} is {running} after site.yml started {run_id!r}"
        return run


@pytest.fixture(scope="module")
def fault_lab(pytestconfig):
    """The fault lab: two hosts converged by site.yml with a short finished run."""
    if pytestconfig.getoption("inventory", default=None):
        pytest.skip("--inventory names a cluster of your own: the fault-injection tests need a lab")
    lab = Lab(LAB_NAME, playbook_vars=[])
    started = datetime.now(timezone.utc)
    try:
        timed("faults: lab up (2 hosts)", lab.command, "up", "--hosts", "2")
        first = lab.playbook("site.yml", "-e", json.dumps(run_vars(BASE_RUN["run_id"], BASE_RUN["overrides"], wait=True)),
                             log_name="faults-site-first-run")
        assert_succeeded(first)
        results = Results(RESULTS_FILE, {
            "started": started.isoformat(timespec="seconds"),
            "machine": machine(),
            "lab": {"name": LAB_NAME, "hosts": 2},
            "commit": source_commit(),
            "settings": {
                "trainer_preset": PRESET, "fault_overrides": FAULT_OVERRIDES, "long_overrides": LONG_OVERRIDES,
                "inject_after_step": INJECT_AFTER_STEP, "dist_timeout_s": DIST_TIMEOUT_S,
                "timeout_margin_s": TIMEOUT_MARGIN_S, "checkpoint_pause_s": CHECKPOINT_PAUSE_S,
                "trainer_torchrun_max_restarts": role_default("trainer_torchrun_max_restarts"),
                "trainer_restart_max_retries": role_default("trainer_restart_max_retries"),
                "trainer_supervisor_restart_sec": role_default("trainer_supervisor_restart_sec"),
            }})
        yield FaultLab(lab, results, session_tag=started.strftime("%m%d%H%M%S"))
        results.data["session"]["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        results.write()
        missing = [case for case in EXPECTED_CASES if case not in results.data["cases"]]
        if missing:
            print(f"\n{DOC_FILE.relative_to(REPO)} not rendered: cases {missing} did not run in this session")
        else:
            render(RESULTS_FILE, DOC_FILE)
    finally:
        if not KEEP_LAB:
            timed("faults: lab down", lab.command, "down")


class recording:
    """Record a case's result when its block ends, also when an assertion in it fails."""

    def __init__(self, fault_lab: FaultLab, result: CaseResult):
        self.fault_lab, self.result = fault_lab, result

    def __enter__(self) -> CaseResult:
        return self.result

    def __exit__(self, kind, error, traceback):
        if error is None:
            self.result.passed = True
        else:
            self.result.outcome = f"FAILED: {str(error).splitlines()[0] if str(error) else kind.__name__}"
        self.fault_lab.results.record(self.result.case, self.result)
        return False


def assert_completed(run: FaultRun, summary: dict, world_size: int = 2) -> None:
    assert summary.get("status") == "complete", f"{run.run_id}: summary {summary}"
    assert summary["final_step"] == run.max_steps, f"{run.run_id}: final_step {summary['final_step']}, " \
                                                   f"expected {run.max_steps}"
    assert summary["world_size"] == world_size, f"{run.run_id}: summary {summary}"


def assert_resumed_from_newest_checkpoint(run: FaultRun, recovery, summary: dict) -> None:
    assert recovery.resumed_from is not None, (
        f"{run.run_id}: rank 0 never logged 'resumed from step' after the fault; its log ends:\n{run.log_tail()}")
    assert recovery.resumed_from == recovery.newest_checkpoint_before_restart, (
        f"{run.run_id}: resumed from step {recovery.resumed_from}, but the newest checkpoint written before "
        f"the restart was step {recovery.newest_checkpoint_before_restart}")
    assert recovery.first_step_after == recovery.resumed_from + 1, (
        f"{run.run_id}: the first step after resuming from {recovery.resumed_from} was {recovery.first_step_after}")
    assert summary["resumed_from_step"] == recovery.resumed_from, f"{run.run_id}: summary {summary}"


def describe_recovery(recovery, injected_at: datetime) -> dict:
    return {"last_step_before_restart": recovery.last_step_before_restart,
            "newest_checkpoint_before_restart": recovery.newest_checkpoint_before_restart,
            "resumed_from_step": recovery.resumed_from,
            "resume_logged_after_s": seconds_between(injected_at, recovery.resumed_at)}


# --- 6. Bad inventories and corpora: preflight stops, no host changes ------------------------------

def lab_inventory(lab: Lab) -> tuple[dict, dict]:
    hosts = yaml.safe_load((lab.inventory / "hosts.yml").read_text())
    group_vars = yaml.safe_load((lab.inventory / "group_vars" / "all.yml").read_text())
    return hosts, group_vars


def bad_inventory(lab: Lab, path: Path, change) -> Path:
    """The lab's inventory with its group_vars inline, changed by change(inventory, master, worker)."""
    inventory, group_vars = lab_inventory(lab)
    inventory["all"]["vars"] = group_vars
    groups = inventory["all"]["children"]["cluster"]["children"]
    [master] = groups["master"]["hosts"]
    [worker] = groups["workers"]["hosts"]
    change(inventory, groups, master, worker)
    path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    return path


def host_var(name: str, value):
    def change(inventory, groups, master, worker):
        groups["workers"]["hosts"][worker][name] = value
    return change


def group_var(name: str, value):
    def change(inventory, groups, master, worker):
        inventory["all"]["vars"][name] = value
    return change


def no_master(inventory, groups, master, worker):
    groups["workers"]["hosts"] = {**groups["master"]["hosts"], **groups["workers"]["hosts"]}
    groups["master"]["hosts"] = {}


def two_masters(inventory, groups, master, worker):
    groups["master"]["hosts"] = {**groups["master"]["hosts"], **groups["workers"]["hosts"]}
    groups["workers"]["hosts"] = {}


def write_corpus(tmp_path: Path, name: str, data: bytes | None) -> str:
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    return str(path)


SHAKESPEARE = (REPO.parent / "shared" / "data" / "tinyshakespeare.txt")
# (case, what is wrong, how the inventory changes (tmp_path -> change), fragments of the message; {master}
# and {worker} stand for the lab's host names, {corpus} for the corpus path)
BAD_INPUTS = [
    ("6a", "duplicated node rank (the worker sets trainer_node_rank: 0)", lambda tmp: host_var("trainer_node_rank", 0),
     ['The node ranks {{"{master}": 0, "{worker}": 0}}', "must be 0..1, each once"]),
    ("6b", "missing node rank (ranks 0 and 2)", lambda tmp: host_var("trainer_node_rank", 2),
     ['The node ranks {{"{master}": 0, "{worker}": 2}}', "must be 0..1, each once"]),
    ("6c", "no master (both hosts under workers)", lambda tmp: no_master,
     ["The inventory group `master` holds 0 host(s)", "must hold exactly one"]),
    ("6d", "two masters (both hosts under master)", lambda tmp: two_masters,
     ["The inventory group `master` holds 2 host(s)", "must hold exactly one"]),
    ("6e", 'wrong variable type (trainer_nproc_per_node: "1", a string)',
     lambda tmp: host_var("trainer_nproc_per_node", "1"),
     ['trainer_nproc_per_node is "1" on {worker}; it must be an integer of at least 1']),
    ("6f", "an interface name that does not exist (trainer_gloo_socket_ifname: nosuch0)",
     lambda tmp: host_var("trainer_gloo_socket_ifname", "nosuch0"),
     ['trainer_gloo_socket_ifname is "nosuch0", but {worker} has no such interface', "or to auto"]),
    ("6g", "corpus missing", lambda tmp: group_var("trainer_corpus_path", write_corpus(tmp, "missing.txt", None)),
     ["The corpus {corpus} does not exist on the control node", "trainer_corpus_path"]),
    ("6h", "corpus empty", lambda tmp: group_var("trainer_corpus_path", write_corpus(tmp, "empty.txt", b"")),
     ["The corpus {corpus} is empty"]),
    ("6i", "corpus not UTF-8 text",
     lambda tmp: group_var("trainer_corpus_path", write_corpus(
         tmp, "latin1.txt", SHAKESPEARE.read_bytes()[:8192] + "Très élégant\n".encode("latin-1") * 100)),
     ["The corpus {corpus} is not UTF-8 text", "iconv"]),
    ("6j", "corpus too short for the context (1000 bytes)",
     lambda tmp: group_var("trainer_corpus_path", write_corpus(tmp, "short.txt", SHAKESPEARE.read_bytes()[:1000])),
     ["The corpus {corpus} has 1000 bytes, fewer than trainer_corpus_min_bytes"]),
]


def failure_messages(run: PlaybookRun) -> list[str]:
    """The distinct messages of the failed tasks (Ansible's "[ERROR]: Task failed: ..." lines)."""
    found = re.findall(r"^\[ERROR\]: Task failed: (?:Action failed: )?(.*)$", run.output, re.M)
    return list(dict.fromkeys(found))


@pytest.fixture(scope="module")
def settled_hosts(fault_lab) -> dict:
    """A snapshot of the hosts after the base run finished, before the bad-input cases."""
    run = FaultRun(fault_lab.lab, fault_lab.cluster(), BASE_RUN["run_id"], BASE_RUN["overrides"]["max_steps"])
    assert run.summary() is not None, "the base run did not finish"
    return snapshot(fault_lab.cluster().names)


@pytest.mark.parametrize("case, problem, make_change, fragments", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_stops_before_any_host_changes(fault_lab, settled_hosts, tmp_path, case, problem, make_change,
                                                 fragments):
    lab = fault_lab.lab
    cluster = fault_lab.cluster()
    change = make_change(tmp_path)
    inventory = bad_inventory(lab, tmp_path / "hosts.yml", change)
    corpus = yaml.safe_load(inventory.read_text())["all"]["vars"].get("trainer_corpus_path", "")
    names = {"master": cluster.names[0], "worker": cluster.names[1], "corpus": corpus}
    with recording(fault_lab, CaseResult(case, f"site.yml with {problem}", "")) as result:
        started = time.monotonic()
        run = timed(f"faults-bad-input-{case}", run_playbook, inventory, "site.yml", "-e",
                    json.dumps(run_vars(BASE_RUN["run_id"], BASE_RUN["overrides"], wait=True)),
                    log_name=f"faults-bad-input-{case}")
        exit_after = round(time.monotonic() - started, 1)
        messages = [message.replace(f"{tmp_path}/", "") for message in failure_messages(run)]
        result.details = {"exit_code": run.returncode, "exit_after_s": exit_after}
        result.outcome = f"exit {run.returncode} after {exit_after} s, in preflight: {' / '.join(messages)}"
        assert run.returncode != 0, f"site.yml accepted {problem} (log {run.log})"
        assert len(messages) == 1, f"expected one message, got {messages} (log {run.log})"
        text = " ".join(run.output.split())
        for fragment in fragments:
            expected = fragment.format(**names)
            assert expected in text, f"{expected!r} is not in the output of site.yml (log {run.log}):\n{run.tail(30)}"
        assert "PLAY [Install the Docker engine" not in run.output, f"site.yml went past the preflight play ({run.log})"
        changed = {host: counts["changed"] for host, counts in run.recap.items() if counts["changed"]}
        assert not changed, f"changed={changed} (log {run.log})"
        differences = snapshot_differences(settled_hosts, snapshot(cluster.names))
        assert not differences, "site.yml failed but changed the hosts:\n" + "\n".join(differences[:40])
        result.progress_lost_steps = 0


# --- 5. Re-running site.yml mid-run --------------------------------------------------------------

def test_rerun_mid_run_changes_nothing(fault_lab):
    with recording(fault_lab, CaseResult("5", "site.yml re-run (all stages) during a healthy run", "")) as result:
        run = fault_lab.start("faults-rerun", LONG_OVERRIDES)
        run.wait_for_step(100)
        run.yield_cpu()
        states = {host: run.container_state(host) for host in run.cluster.names}
        started = time.monotonic()
        rerun = fault_lab.lab.playbook("site.yml", "-e", json.dumps(run_vars(run.run_id, LONG_OVERRIDES)),
                                       log_name="faults-site-rerun-mid-run")
        rerun_s = round(time.monotonic() - started, 1)
        assert_succeeded(rerun)
        assert run.summary() is None, (
            f"{run.run_id} finished before the re-run of site.yml did; raise LONG_OVERRIDES' max_steps")
        step_at_end = max(int(m[1]) for line in run.rank0_log() if (m := re.search(r"step (\d+)/", line.text)))
        changed = {host: counts["changed"] for host, counts in rerun.recap.items() if counts["changed"]}
        result.details = {"rerun_s": rerun_s, "changed": changed,
                          "step_when_rerun_ended": step_at_end}
        assert rerun.recap and not changed, f"changed={changed}: {rerun.changed_tasks()} (log {rerun.log})"
        after = {host: run.container_state(host) for host in run.cluster.names}
        assert after == states, f"the re-run touched the trainer containers: before {states}, after {after}"
        summary = run.wait_for_summary()
        assert_completed(run, summary)
        assert summary["resumed_from_step"] is None, f"the run restarted: {summary}"
        assert not [line for line in run.rank0_log() if "resumed from step" in line.text], "rank 0 logged a resume"
        result.progress_lost_steps = 0
        result.outcome = (f"changed=0 on every host; containers not restarted (same ID, StartedAt, restart count); "
                          f"the run went on (step {step_at_end} when the re-run ended) and completed "
                          f"{summary['final_step']} steps without a resume")


# --- 1-4. Faults during a run ----------------------------------------------------------------------

def record_recovery(result: CaseResult, recovery, injected_at: datetime) -> None:
    result.progress_lost_steps = recovery.progress_lost
    result.recovery_s = seconds_between(injected_at, recovery.first_step_at)
    result.details.update(describe_recovery(recovery, injected_at))


def test_worker_training_process_killed(fault_lab):
    with recording(fault_lab, CaseResult("1", "kill -9 of a worker's training process mid-run", "")) as result:
        run = fault_lab.start("faults-kill-worker", FAULT_OVERRIDES)
        worker = run.cluster.names[1]
        run.wait_for_step(INJECT_AFTER_STEP)
        container_before = run.container_state(worker)
        pid, injected_at = run.signal_training_process(worker, "KILL")
        summary = run.wait_for_summary()
        recovery = run.recovery(injected_at)
        record_recovery(result, recovery, injected_at)
        assert_completed(run, summary)
        assert_resumed_from_newest_checkpoint(run, recovery, summary)
        container_after = run.container_state(worker)
        result.details["worker_container_restarted"] = container_after["started_at"] != container_before["started_at"]
        result.outcome = (f"torchrun restarted the group{' and the container restarted' if result.details['worker_container_restarted'] else ' inside the running containers'}; "
                          f"resumed from step {recovery.resumed_from}; completed {summary['final_step']} steps")


def test_worker_container_killed(fault_lab):
    with recording(fault_lab, CaseResult("2", "docker kill of a worker's trainer container mid-run", "")) as result:
        run = fault_lab.start("faults-docker-kill", FAULT_OVERRIDES)
        worker = run.cluster.names[1]
        run.wait_for_step(INJECT_AFTER_STEP)
        before = run.container_state(worker)
        injected_at = now()
        on_host(worker, "docker", "kill", run.container(worker))
        summary = run.wait_for_summary()
        recovery = run.recovery(injected_at)
        record_recovery(result, recovery, injected_at)
        after = run.container_state(worker)
        result.details.update(worker_started_at_before=before["started_at"], worker_started_at_after=after["started_at"])
        assert after["id"] == before["id"], f"{worker}: the trainer container was replaced, not started again"
        assert after["started_at"] != before["started_at"], f"{worker}: the killed container never started again"
        assert_completed(run, summary)
        assert_resumed_from_newest_checkpoint(run, recovery, summary)
        result.outcome = (f"the container came back (the supervisor unit started it again) and rejoined; "
                          f"resumed from step {recovery.resumed_from}; completed {summary['final_step']} steps")


def test_rank0_killed_while_writing_a_checkpoint(fault_lab):
    torn_step = 2 * CHECKPOINT_INTERVAL
    pause = {"TRAIN_FAULT_CHECKPOINT_PAUSE": f"{torn_step}:{CHECKPOINT_PAUSE_S}"}
    with recording(fault_lab, CaseResult("3", f"kill -9 of rank 0 halfway through writing checkpoint {torn_step}",
                                         "")) as result:
        run = fault_lab.start("faults-kill-rank0-mid-checkpoint", FAULT_OVERRIDES, environment=pause)
        run.wait_for(re.compile(rf"fault injection: pausing .*ckpt-{torn_step:08d}\.pt"), timeout=300)
        files = run.checkpoint_files()
        pid, injected_at = run.signal_training_process(run.master, "KILL")
        result.details["checkpoint_files_at_kill"] = files
        assert f"ckpt-{torn_step:08d}.pt" not in files, f"checkpoint {torn_step} was complete before the kill: {files}"
        assert any(name.startswith(f".ckpt-{torn_step:08d}.pt.") and name.endswith(".tmp") for name in files), (
            f"no half-written temp file of checkpoint {torn_step} at the kill: {files}")
        summary = run.wait_for_summary()
        recovery = run.recovery(injected_at)
        record_recovery(result, recovery, injected_at)
        assert_completed(run, summary)
        assert recovery.resumed_from == torn_step - CHECKPOINT_INTERVAL, (
            f"expected a resume from the previous checkpoint {torn_step - CHECKPOINT_INTERVAL}, got {recovery}")
        assert_resumed_from_newest_checkpoint(run, recovery, summary)
        warnings = [line.text for line in run.rank0_log() if "unreadable" in line.text]
        result.details["unreadable_checkpoint_warnings"] = warnings
        result.outcome = (f"the torn write stayed a temp file; the previous checkpoint (step {recovery.resumed_from}) "
                          f"loaded; completed {summary['final_step']} steps")


def test_worker_paused_past_the_collective_timeout(fault_lab):
    overrides = dict(FAULT_OVERRIDES, dist_timeout_s=DIST_TIMEOUT_S)
    with recording(fault_lab, CaseResult("4", f"SIGSTOP of a worker's training process (dist_timeout_s={DIST_TIMEOUT_S})",
                                         "")) as result:
        run = fault_lab.start("faults-sigstop-worker", overrides)
        worker = run.cluster.names[1]
        run.wait_for_step(INJECT_AFTER_STEP)
        pid, injected_at = run.signal_training_process(worker, "STOP")
        try:
            timeout_line, _ = run.wait_for("dist_timeout_s", after=injected_at,
                                           timeout=DIST_TIMEOUT_S + TIMEOUT_MARGIN_S + 60)
            detected_s = seconds_between(injected_at, timeout_line.at)
            result.details.update(timeout_line=timeout_line.text, timeout_reported_after_s=detected_s)
            assert detected_s <= DIST_TIMEOUT_S + TIMEOUT_MARGIN_S, (
                f"rank 0 reported the timeout {detected_s} s after the pause, more than "
                f"dist_timeout_s={DIST_TIMEOUT_S} + {TIMEOUT_MARGIN_S} s")
            # The stopped process is left alone: the restart must get rid of it by itself.
            summary = run.wait_for_summary()
        finally:
            # A process the restart left behind (or a failed test) would stay stopped forever.
            left_behind = on_host(worker, "kill", "-0", str(pid), check=False).returncode == 0
            result.details["stopped_process_left_behind"] = left_behind
            if left_behind:
                on_host(worker, "kill", "-CONT", str(pid), check=False)
        recovery = run.recovery(injected_at)
        record_recovery(result, recovery, injected_at)
        assert_completed(run, summary)
        assert_resumed_from_newest_checkpoint(run, recovery, summary)
        result.outcome = (f"rank 0 failed fast {detected_s} s after the pause (\"{timeout_line.text.strip()[:90]}\"); "
                          f"the group restarted, resumed from step {recovery.resumed_from}, completed "
                          f"{summary['final_step']} steps")


# --- 7. A host unreachable while it is provisioned ----------------------------------------------

def compose_files(hosts: list[str]) -> dict[str, str]:
    return {host: on_host(host, "sh", "-c", "cat /srv/chargpt/compose/compose.yml 2>/dev/null || true").stdout
            for host in hosts}


def test_host_unreachable_during_provisioning(fault_lab):
    """A third host is added, then frozen (docker pause) once the Docker stage starts: site.yml must
    fail, leave no compose file for a world of three, and leave the running trainers alone."""
    lab = fault_lab.lab
    with recording(fault_lab, CaseResult("7", "a new third host frozen (docker pause) while site.yml provisions it",
                                         "")) as result:
        run = fault_lab.start("faults-unreachable", LONG_OVERRIDES)
        run.wait_for_step(100)
        run.yield_cpu()
        hosts = run.cluster.names
        states = {host: run.container_state(host) for host in hosts}
        composes = compose_files(hosts)
        lab.command("add")
        new_host = [name for name in Cluster(lab.inventory).names if name not in hosts]
        assert len(new_host) == 1, f"lab/lab add gave {new_host}"
        new_host = new_host[0]
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = LOG_DIR / "faults-site-unreachable.log"
        command = ["ansible-playbook", "site.yml", "-i", str(lab.inventory), "-e",
                   json.dumps(run_vars(run.run_id, LONG_OVERRIDES))]
        started = time.monotonic()
        paused_at = None
        with open(log, "w") as output, subprocess.Popen(
                command, cwd=REPO, env=dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0"),
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as playbook:
            try:
                for line in playbook.stdout:
                    output.write(line)
                    if paused_at is None and line.startswith("PLAY [Install the Docker engine"):
                        subprocess.run(["docker", "pause", new_host], check=True, capture_output=True)
                        paused_at = time.monotonic()
                returncode = playbook.wait(timeout=600)
            finally:
                if playbook.poll() is None:
                    playbook.kill()
        failed_after = round(time.monotonic() - (paused_at or started), 1)
        text = log.read_text()
        subprocess.run(["docker", "unpause", new_host], capture_output=True)
        assert paused_at is not None, f"site.yml never reached the Docker stage (log {log})"
        result.details.update(exit_code=returncode, failed_after_pause_s=failed_after)
        assert returncode != 0, f"site.yml succeeded with {new_host} frozen (log {log})"
        assert re.search(rf"{re.escape(new_host)}.*UNREACHABLE", text), f"{new_host} was not reported unreachable ({log})"
        guarded = "dropped out of this play" in text
        result.details["stopped_by"] = ("the trainer stage's guard (no compose file for a host that dropped out)"
                                        if guarded else "any_errors_fatal: no play ran a task after the host dropped out")
        assert guarded or "TASK [trainer : Render this host's compose file]" not in text, (
            f"the trainer stage rendered compose files without noticing that {new_host} is gone ({log})")
        assert compose_files(hosts) == composes, "a compose file changed on the hosts that stayed"
        leftover = on_host(new_host, "sh", "-c", "ls /srv/chargpt/compose/compose.yml 2>/dev/null || true").stdout
        assert not leftover.strip(), f"{new_host} got a compose file"
        assert all('WORLD_SIZE: "2"' in content for content in composes.values()), composes
        after = {host: run.container_state(host) for host in hosts}
        assert after == states, f"the failed run touched the trainers: before {states}, after {after}"
        summary = run.wait_for_summary()
        assert_completed(run, summary, world_size=2)
        assert summary["resumed_from_step"] is None, f"the run restarted: {summary}"
        result.progress_lost_steps = 0
        result.outcome = (f"exit {returncode} {failed_after} s after the host froze; no compose file for 3 hosts "
                          f"anywhere; the trainers untouched, the run completed {summary['final_step']} steps at "
                          f"world size 2")
