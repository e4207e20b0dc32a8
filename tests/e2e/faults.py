"""Fault injection in a lab: start a run, follow rank 0's log, hit a process or a host, measure what
the run lost and how long it took to train again, and record it for docs/RELIABILITY.md.

Faults are injected from the control node through the lab host containers (`docker exec <lab host>
...`): the lab's hosts share this machine's clock, so the injection time and the timestamps of
`docker logs --timestamps` inside a host can be compared directly."""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from harness import REPO, damage
from harness.playbook import PlaybookRun, assert_succeeded
from harness.roles import role_default

from .cluster import Cluster
from .lab import Lab

RESULTS_FILE = REPO / "artifacts" / "reliability" / "faults.json"
SUMMARY_TIMEOUT_S = 420
STEP_LINE = re.compile(r"\[chargpt\] step (\d+)/(\d+) \|")
RESUMED_LINE = re.compile(r"\[chargpt\] resumed from step (\d+)")
CHECKPOINT_LINE = re.compile(r"\[chargpt\] checkpoint ckpt-(\d+)\.pt written")
LOSS_LINE = re.compile(r"\[chargpt\] step (\d+)/\d+ \| loss ([0-9.]+) \|")
# Run by a lab host's python3: damages the newest file of a folder that matches a pattern.
DAMAGE_SCRIPT = Path(damage.__file__).read_text()
# What a host snapshot covers besides the trainer role's folder (cluster_base_dir, with the run
# directories): the units and Docker's configuration that the roles write.
SNAPSHOT_SYSTEM_PATHS = "/etc/systemd/system /etc/docker"


def now() -> datetime:
    return datetime.now(timezone.utc)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 timestamp of `docker logs --timestamps` (nanoseconds cut to microseconds)."""
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", text)
    assert match, f"not a docker log timestamp: {text!r}"
    fraction = (match[2] or "0")[:6].ljust(6, "0")
    return datetime.fromisoformat(f"{match[1]}.{fraction}+00:00")


def damage_on_host(host: str, folder: str, pattern: str) -> str:
    """Damage the newest file in host's folder that matches pattern (harness.damage); its name."""
    return on_host(host, "python3", "-c", DAMAGE_SCRIPT, folder, pattern).stdout.strip()


def on_host(host: str, *command: str, check: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
    """Run a command inside a lab host (its container on this machine's engine)."""
    result = subprocess.run(["docker", "exec", host, *command], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{host}: {' '.join(command)} exited {result.returncode}: {result.stderr}"
    return result


@dataclass(frozen=True)
class LogLine:
    at: datetime
    text: str


@dataclass
class Recovery:
    """What one fault cost: measured from rank 0's log around the injection."""

    last_step_before_restart: int | None
    newest_checkpoint_before_restart: int | None
    resumed_from: int | None
    resumed_at: datetime | None
    first_step_after: int | None
    first_step_at: datetime | None

    @property
    def progress_lost(self) -> int | None:
        if self.last_step_before_restart is None or self.resumed_from is None:
            return None
        return self.last_step_before_restart - self.resumed_from


class FaultRun:
    """One training run on a lab, started by site.yml, followed through rank 0's container log."""

    def __init__(self, lab: Lab, cluster: Cluster, run_id: str, max_steps: int):
        self.lab, self.cluster, self.run_id, self.max_steps = lab, cluster, run_id, max_steps
        self.master = cluster.names[0]

    def container(self, host: str) -> str:
        return self.cluster.trainer_container_name(host)

    def rank0_log(self) -> list[LogLine]:
        return self.host_log(self.master)

    def host_log(self, host: str) -> list[LogLine]:
        """The log of host's trainer container, in time order."""
        result = on_host(host, "docker", "logs", "--timestamps", self.container(host), check=False)
        lines = []
        for raw in (result.stdout + result.stderr).splitlines():
            stamp, _, text = raw.partition(" ")
            if stamp[:1].isdigit():
                lines.append(LogLine(parse_timestamp(stamp), text))
        return sorted(lines, key=lambda line: line.at)

    def log_tail(self, lines: int = 25, host: str | None = None) -> str:
        return "\n".join(line.text for line in self.host_log(host or self.master)[-lines:])

    def wait_for(self, pattern: re.Pattern | str, after: datetime | None = None, timeout: float = 300,
                 accept=lambda match: True, host: str | None = None) -> tuple[LogLine, re.Match]:
        """The first line of rank 0's log (or host's trainer's) after a time that matches and that
        accept() takes."""
        pattern = re.compile(pattern) if isinstance(pattern, str) else pattern
        host = host or self.master
        deadline = time.monotonic() + timeout
        while True:
            for line in self.host_log(host):
                match = pattern.search(line.text)
                if match and (after is None or line.at > after) and accept(match):
                    return line, match
            assert time.monotonic() < deadline, (
                f"{host}'s trainer logged no line matching {pattern.pattern!r} within {timeout:.0f} s; its log "
                "ends:\n" + self.log_tail(host=host))
            time.sleep(0.5)

    def latest_step(self) -> int:
        """The newest step rank 0 logged (0 before the first)."""
        return max((int(m[1]) for line in self.rank0_log() if (m := STEP_LINE.search(line.text))), default=0)

    def wait_for_step(self, step: int, timeout: float = 300) -> LogLine:
        line, _ = self.wait_for(STEP_LINE, timeout=timeout, accept=lambda match: int(match[1]) >= step)
        return line

    @functools.cached_property
    def run_dir(self) -> str:
        """The run directory on the master (read from rank 0's container, which runs this run)."""
        run_dir = self.cluster.run_dir_on_master()
        assert run_dir.endswith(f"/{self.run_id}"), f"rank 0's container runs {run_dir}, not {self.run_id}"
        return run_dir

    def summary(self) -> dict | None:
        result = on_host(self.master, "cat", f"{self.run_dir}/summary.json", check=False)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def wait_for_summary(self, timeout: float = SUMMARY_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout
        while (summary := self.summary()) is None:
            assert time.monotonic() < deadline, (
                f"{self.run_id} wrote no summary.json within {timeout:.0f} s; rank 0's log ends:\n{self.log_tail()}")
            time.sleep(2)
        return summary

    def checkpoint_files(self, host: str | None = None) -> list[str]:
        result = on_host(host or self.master, "ls", "-A", f"{self.run_dir}/checkpoints", check=False)
        return sorted(result.stdout.split())

    def damage_newest_checkpoint(self, host: str) -> str:
        """Damage host's newest checkpoint in place, as a bad disk would (harness.damage); its file name."""
        return damage_on_host(host, f"{self.run_dir}/checkpoints", "ckpt-*.pt")

    def losses(self, host: str | None = None) -> list[tuple[LogLine, int, float]]:
        """(line, step, loss) of every step line of host's trainer (rank 0's by default)."""
        return [(line, int(match[1]), float(match[2])) for line in self.host_log(host or self.master)
                if (match := LOSS_LINE.search(line.text))]

    def training_pid(self, host: str) -> int:
        """The host PID of the training process (`-m chargpt train`, torchrun's child) in host's trainer."""
        output = on_host(host, "docker", "top", self.container(host), "-eo", "pid,args").stdout
        pids = [int(line.split(None, 1)[0]) for line in output.splitlines()[1:]
                if "-m chargpt train" in line and "torchrun" not in line]
        assert len(pids) == 1, f"{host}: expected one training process in {self.container(host)}:\n{output}"
        return pids[0]

    def signal_training_process(self, host: str, signal: str) -> tuple[int, datetime]:
        pid = self.training_pid(host)
        injected_at = now()
        on_host(host, "kill", f"-{signal}", str(pid))
        return pid, injected_at

    def container_state(self, host: str) -> dict:
        """ID, start time, restart count and status of host's trainer container."""
        output = on_host(host, "docker", "inspect", "--format",
                         "{{.Id}} {{.State.StartedAt}} {{.RestartCount}} {{.State.Status}}",
                         self.container(host)).stdout.split()
        return dict(zip(("id", "started_at", "restart_count", "status"), output))

    def recovery(self, injected_at: datetime) -> Recovery:
        """Read rank 0's log around the injection: the last step before, the resume, the first step after."""
        log = self.rank0_log()
        before = [line for line in log if line.at <= injected_at]
        after = [line for line in log if line.at > injected_at]
        resumed = next(((line, RESUMED_LINE.search(line.text)) for line in after if RESUMED_LINE.search(line.text)),
                       None)
        # Steps logged after the injection but before the restart count as progress made, then lost.
        until_resume = before + [line for line in after if resumed is None or line.at < resumed[0].at]
        steps = [int(m[1]) for line in until_resume if (m := STEP_LINE.search(line.text))]
        checkpoints = [int(m[1]) for line in until_resume if (m := CHECKPOINT_LINE.search(line.text))]
        first_after = None
        if resumed is not None:
            first_after = next(((line, STEP_LINE.search(line.text)) for line in after
                                if line.at >= resumed[0].at and STEP_LINE.search(line.text)), None)
        return Recovery(
            last_step_before_restart=max(steps) if steps else None,
            newest_checkpoint_before_restart=max(checkpoints) if checkpoints else None,
            resumed_from=int(resumed[1][1]) if resumed else None,
            resumed_at=resumed[0].at if resumed else None,
            first_step_after=int(first_after[1][1]) if first_after else None,
            first_step_at=first_after[0].at if first_after else None)


def start_run(lab: Lab, run_vars: dict, log_name: str, inventory: Path | None = None,
              every_stage: bool = False) -> PlaybookRun:
    """Start (or leave running) the run that run_vars describe: only the trainer stage and preflight,
    or every stage where the hosts need provisioning first."""
    stages = () if every_stage else ("--tags", "trainer")
    run = lab.playbook("site.yml", *stages, "-e", json.dumps(run_vars), log_name=log_name, inventory=inventory)
    assert_succeeded(run)
    return run


# --- Host snapshots ------------------------------------------------------------------------------

def snapshot_host(host: str) -> dict:
    """Everything a failed deployment must leave alone on a host: the files under the roles' folders
    (path, type, size, mtime; content hashes of the regular files) and every container with its ID,
    start time, restart count and status."""
    paths = f"{role_default('cluster', 'cluster_base_dir')} {SNAPSHOT_SYSTEM_PATHS}"
    files = on_host(host, "sh", "-c",
                    f"find {paths} -xdev -printf '%p %y %s %T@\\n' 2>/dev/null | sort; "
                    f"find {paths} -xdev -type f -size -2M -exec sha256sum {{}} + 2>/dev/null | sort",
                    check=False).stdout
    containers = on_host(host, "sh", "-c",
                         "ids=$(docker ps -aq --no-trunc); [ -z \"$ids\" ] || docker inspect --format "
                         "'{{.Id}} {{.Name}} {{.State.StartedAt}} {{.RestartCount}} {{.State.Status}}' $ids | sort",
                         check=False).stdout
    # Both are never empty on a deployed host: an empty one means the commands failed.
    assert files.strip() and containers.strip(), f"{host}: the snapshot read nothing (files {files!r}, containers " \
                                                 f"{containers!r}): is the host up?"
    return {"files": files.splitlines(), "containers": containers.splitlines()}


def snapshot(hosts: list[str]) -> dict[str, dict]:
    return {host: snapshot_host(host) for host in hosts}


def snapshot_differences(before: dict[str, dict], after: dict[str, dict]) -> list[str]:
    """'host: - line' / 'host: + line' for each line that differs."""
    differences = []
    for host in sorted(set(before) | set(after)):
        for part in ("files", "containers"):
            old = set(before.get(host, {}).get(part, []))
            new = set(after.get(host, {}).get(part, []))
            differences += [f"{host}: - {line}" for line in sorted(old - new)]
            differences += [f"{host}: + {line}" for line in sorted(new - old)]
    return differences


# --- Results for docs/RELIABILITY.md -------------------------------------------------------------

@dataclass
class CaseResult:
    case: str          # the number in issue 5's list, e.g. "1" or "6d"
    fault: str         # what was done
    outcome: str       # what happened, measured
    passed: bool = False
    progress_lost_steps: int | None = None
    recovery_s: float | None = None
    details: dict = field(default_factory=dict)


class Results:
    """The session's fault results in RESULTS_FILE (JSON), rewritten after every case."""

    def __init__(self, path: Path, session: dict):
        self.path = path
        self.data = {"session": session, "cases": {}}
        self.write()

    def record(self, key: str, result: CaseResult) -> None:
        self.data["cases"][key] = asdict(result)
        self.write()

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_suffix(".tmp")
        temp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(temp, self.path)


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else round((end - start).total_seconds(), 1)
