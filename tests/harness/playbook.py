"""The one way the tests run ansible-playbook: from the repository root with its ansible.cfg, no
colour, stdout and stderr in one stream that can be followed line by line, optionally logged to
artifacts/e2e-logs/, and read back as a PlaybookRun (recap, changed hosts and tasks, failures)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from . import REPO

LOG_DIR = REPO / "artifacts" / "e2e-logs"
RECAP_LINE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\b")
FAILED_TASK = "[ERROR]: Task failed: "


def tool(name: str) -> str:
    """An Ansible command from the running interpreter's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: install requirements.txt into this environment")
    return found


def ansible_env(**extra: str) -> dict[str, str]:
    """This process's environment for an Ansible command: the repository's ansible.cfg, no colour,
    no warning about an inventory without hosts, and the extra variables given."""
    return dict(os.environ, ANSIBLE_CONFIG=str(REPO / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0",
                ANSIBLE_LOCALHOST_WARNING="false", **extra)


@dataclass
class PlaybookRun:
    """A finished ansible-playbook run: its command, exit status and output (stdout and stderr merged)."""

    command: list[str]
    returncode: int
    output: str
    log: Path | None = None

    @property
    def stdout(self) -> str:
        """The output, under the name subprocess.CompletedProcess gives it (stderr is merged into it)."""
        return self.output

    @property
    def text(self) -> str:
        """The output with whitespace collapsed: Ansible folds long messages over several lines."""
        return " ".join(self.output.split())

    @cached_property
    def recap(self) -> dict[str, dict[str, int]]:
        """PLAY RECAP: {host: {ok, changed, unreachable, failed}} (see parse_recap)."""
        return parse_recap(self.output)

    def changed_hosts(self) -> dict[str, int]:
        """{host: changed} for the hosts of the recap that reported a change."""
        return {host: counts["changed"] for host, counts in self.recap.items() if counts["changed"]}

    def task_results(self, *statuses: str) -> list[tuple[str, str]]:
        """(task name, host) for each host result of one of statuses ("ok", "changed", "skipping", ...)."""
        results, task = [], "?"
        for line in self.output.splitlines():
            if line.startswith("TASK ["):
                task = line[6:line.rfind("]")]
            elif any(line.startswith(f"{status}: [") for status in statuses):
                results.append((task, line[line.index("[") + 1:line.index("]")]))
        return results

    def changed_tasks(self) -> list[str]:
        """'task name: host' for each task that reported a change."""
        return [f"{task}: {host}" for task, host in self.task_results("changed")]

    def ran_tasks(self) -> set[str]:
        """The names of the tasks that ran on at least one host (ok or changed, not skipped)."""
        return {task for task, _ in self.task_results("ok", "changed")}

    def failure_messages(self) -> list[str]:
        """The distinct messages of the failed tasks (Ansible's "[ERROR]: Task failed: ..." lines). A
        message that ends with a colon goes on in the next line (argument-spec validation prints
        "Validation of arguments failed:" there), which is taken into it."""
        lines = self.output.splitlines()
        messages = []
        for number, line in enumerate(lines):
            if not line.startswith(FAILED_TASK):
                continue
            message = line.removeprefix(FAILED_TASK).removeprefix("Action failed: ")
            if message.endswith(":") and number + 1 < len(lines):
                message = f"{message} {lines[number + 1].strip()}"
            messages.append(message)
        return list(dict.fromkeys(messages))

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def parse_recap(output: str) -> dict[str, dict[str, int]]:
    """The last PLAY RECAP of an ansible-playbook output: {host: {ok, changed, unreachable, failed}},
    each count read as a whole number. {} when the output has no recap; a recap line that does not
    parse raises, so that a change of Ansible's format cannot pass for "nothing changed"."""
    lines = output.splitlines()
    starts = [number for number, line in enumerate(lines) if line.startswith("PLAY RECAP")]
    if not starts:
        return {}
    counts = {}
    for line in lines[starts[-1] + 1:]:
        if not line.strip():
            break
        match = RECAP_LINE.match(line)
        if match is None:
            raise ValueError(f"a PLAY RECAP line that does not parse: {line!r}")
        counts[match[1]] = {"ok": int(match[2]), "changed": int(match[3]), "unreachable": int(match[4]),
                            "failed": int(match[5])}
    return counts


def run_playbook(playbook: str | Path, inventory: str | Path, *args: str, log_name: str | None = None,
                 timeout: float = 1800, on_line: Callable[[str], None] | None = None,
                 env: dict[str, str] | None = None) -> PlaybookRun:
    """`ansible-playbook -i INVENTORY PLAYBOOK ARGS...` from the repository root (relative paths are
    the repository's). Each output line goes to artifacts/e2e-logs/<log_name>.log (when log_name is
    given) and to on_line(line) as it arrives; env adds environment variables (Ansible settings). Raises
    subprocess.TimeoutExpired when the run takes longer than timeout seconds."""
    command = [tool("ansible-playbook"), "-i", str(inventory), str(playbook), *args]
    log = None
    if log_name is not None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = LOG_DIR / f"{log_name}.log"
    lines: list[str] = []
    expired = threading.Event()
    with (subprocess.Popen(command, cwd=REPO, env=ansible_env(**(env or {})), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True) as process,
          open(log, "w") if log else contextlib.nullcontext() as sink):
        def expire():
            expired.set()
            process.kill()
        watchdog = threading.Timer(timeout, expire)
        watchdog.start()
        try:
            for line in process.stdout:
                lines.append(line)
                if sink is not None:
                    sink.write(line)
                    sink.flush()
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            returncode = process.wait()
        finally:
            watchdog.cancel()
            if process.poll() is None:
                process.kill()
    if expired.is_set():
        raise subprocess.TimeoutExpired(command, timeout, output="".join(lines))
    return PlaybookRun(command, returncode, "".join(lines), log)


def assert_succeeded(run: PlaybookRun) -> None:
    where = f" (full log {run.log})" if run.log else ""
    assert run.returncode == 0, f"`{' '.join(run.command)}` exited {run.returncode}{where}; it ends:\n{run.tail()}"


def assert_nothing_changed(run: PlaybookRun) -> None:
    """The run succeeded and its recap reports no change on any host."""
    assert_succeeded(run)
    assert run.recap, f"no PLAY RECAP in {run.log}"
    changed = run.changed_hosts()
    assert not changed, f"changed={changed}; tasks that changed: {run.changed_tasks()} (log {run.log})"
