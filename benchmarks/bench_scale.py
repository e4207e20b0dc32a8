"""How deployment scales with the number of hosts (not a test: it prints figures). For each host
count, one after the other, a fresh lab (`LAB_NAME=bench<N> lab/lab up --hosts N`), site.yml on it
with the run going on in the background (trainer_wait false), a look at the training steps, then,
once the run has finished and the machine is idle again, playbooks/status.yml, site.yml once to
fetch the run's artifacts and once more to time it, and the lab down (also on failure), so that
one lab runs at a time.

Columns:
- fresh deploy to first step: from the start of site.yml to the time stamp the master's engine
  gave the trainer's log line of step 1 (`docker logs -t chargpt-trainer-rank0` inside
  <lab>-host-1). site.yml already waits for that line (roles/trainer/tasks/started.yml returns once
  every host's trainer joined the group and the master logged a step), so the figure is site.yml's
  wall time less what it did after step 1: its last polling round (up to 3 s) and the tasks after
  it. Both are printed; the image is built beforehand (below), so no host count pays for a build.
- status: wall time of playbooks/status.yml on the finished run (read-only; it must say finished).
- re-run: wall time of site.yml with the same variables on the finished run, whose artifacts an
  earlier run fetched, and the sum of changed= over the PLAY RECAP (0 when idempotent; the changed
  tasks are printed otherwise).
  It runs after the run, not during it: N simulated trainers on the machine's two cores would
  measure the training's load, not the deployment's per-host work.
- bytes sent: bytes of the IP packets this machine (the control node) originates towards the
  lab's subnet (SSH, the image archive, ...), counted by an nftables table of the benchmark's own
  (`chargpt_<lab>`, hook output, removed at the end), around the fresh site.yml and around the
  re-run. The output hook sees only locally originated packets. The bridge's tx_bytes
  (/sys/class/net/br-<network id>/statistics/tx_bytes) is not used. Measured on a 2-host lab: 100
  MiB from host 1 to host 2 (as the registry pull goes) added 0 bytes to it, 50 MB over SSH from
  here added 50.2 MB, but a 12 MB download by a host from the Debian mirror added 12.1 MB too:
  the bridge also transmits what this machine routes to the hosts, i.e. every host's apt
  downloads (the Docker engine). It is printed and kept in --json (bridge_tx_*) for comparison.
- floor: wall time of a playbook of FLOOR_TASKS tasks that each run one module on every host and
  change nothing (`stat`), on the fresh lab before site.yml: what this machine charges per host
  for Ansible's remote work alone. One `stat` costs a lab host about 0.15 s of CPU (measured:
  ansible-core 2.19 sends its module_utils as 56 Python sources in a zip, without bytecode, and
  the host compiles them at each run), so N simulated hosts on two cores queue for them. The
  deployment is mostly such tasks: their 8/2 ratio is what its own ratios tend to here.
- step time: median over the 10-step windows between the master's step log lines that start at
  step >= 20, of the window's time / 10, at world size N. Evaluations
  and checkpoints are moved to the last step (overrides), so that the windows hold only steps.

Headlines are ratios measured in the same run against the smallest host count (2 by default).
Targets here (all simulated hosts share two cores and one disk): fresh deploy at 8 hosts <= 2x
the 2-host one, the re-run <= 1.5x, and the bytes sent for 8 hosts <= 1.2x those for 2.

The first site.yml of a new app/ builds the trainer image on the control node and saves its
archive (both cached by a hash of app/). So that the first host count does not pay for that and
the others not, a warm-up playbook runs the role's image tasks on the control node first (build,
save), before any timing.

It needs what site.yml needs: data/input.txt, and app/wheelhouse where the build has no package
index (both ignored by git: copy them into a new worktree).

    python benchmarks/bench_scale.py [--hosts 2 4 8] [--preset smoke] [--max-steps 400] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from e2e.lab import Lab  # noqa: E402  (tests/ is not a package: its path goes first)
from harness.playbook import PlaybookRun, run_playbook  # noqa: E402

MASTER_CONTAINER = "chargpt-trainer-rank0"
STEP_LINE = re.compile(r"^(\S+) \[chargpt\] step (\d+)/\d+ ")
FIRST_WINDOW_STEP = 20
WINDOWS = 10
LOG_INTERVAL = 10
# The trainer_image role's own tasks on the control node, as site.yml's first run does them, and the
# archive the first manager is sent (ship.yml saves it only for a host that lacks the image).
WARM_UP = """---
- name: Build and save the trainer image on the control node
  hosts: localhost
  connection: local
  gather_facts: false
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
    trainer_image_distribution: copy
  tasks:
    - name: Build the image as site.yml does
      ansible.builtin.include_role:
        name: trainer_image
        public: true
    - name: Save its archive as site.yml does
      community.docker.docker_image_export:
        names: ["{{ trainer_image_ref }}"]
        path: "{{ trainer_image_archive }}"
        timeout: "{{ trainer_image_timeout_s }}"
"""


FLOOR_TASKS = 20
FLOOR = "---\n- name: One module run per task on every host, changing nothing\n  hosts: all\n  gather_facts: false\n" \
    "  tasks:\n" + "".join(f"    - name: Stat a file ({number})\n      ansible.builtin.stat: {{path: /etc/hostname}}\n"
                          for number in range(1, FLOOR_TASKS + 1))


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout.strip()


class ByteCounters:
    """What this machine sends towards a lab: an nftables counter on the output hook, and the
    bridge's tx_bytes for comparison."""

    def __init__(self, lab: str):
        self.table = f"chargpt_{lab.replace('-', '_')}"
        network = f"{lab}-net"
        self.bridge = Path(f"/sys/class/net/br-{docker('network', 'inspect', network, '-f', '{{.Id}}')[:12]}")
        subnet = docker("network", "inspect", network, "-f", "{{(index .IPAM.Config 0).Subnet}}")
        self.nft("add", "table", "ip", self.table)
        self.nft("add", "chain", "ip", self.table, "out", "{ type filter hook output priority 0; policy accept; }")
        self.nft("add", "rule", "ip", self.table, "out", "ip", "daddr", subnet, "counter")

    @staticmethod
    def nft(*args: str) -> str:
        return subprocess.run(["nft", *args], check=True, capture_output=True, text=True).stdout

    def read(self) -> tuple[int, int]:
        """(bytes sent by this machine, bytes the bridge transmitted)."""
        listing = json.loads(self.nft("-j", "list", "table", "ip", self.table))["nftables"]
        sent = sum(expr["counter"]["bytes"] for item in listing if "rule" in item
                   for expr in item["rule"]["expr"] if "counter" in expr)
        return sent, int((self.bridge / "statistics" / "tx_bytes").read_text())

    def remove(self) -> None:
        subprocess.run(["nft", "delete", "table", "ip", self.table], capture_output=True)


def step_times(lab: str) -> list[tuple[int, float]]:
    """(step, epoch seconds) of the master's step log lines, as its engine stamped them."""
    log = docker("exec", f"{lab}-host-1", "docker", "logs", "-t", MASTER_CONTAINER)
    found = []
    for line in log.splitlines():
        if match := STEP_LINE.match(line):
            stamp = re.sub(r"(\.\d{6})\d*", r"\1", match[1]).replace("Z", "+00:00")
            found.append((int(match[2]), datetime.fromisoformat(stamp).timestamp()))
    return found


def first_step_at(lab: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        steps = [at for step, at in step_times(lab) if step >= 1]
        if steps:
            return steps[0]
        time.sleep(0.5)
    sys.exit(f"{lab}: no training step in the master's log {timeout:.0f} s after site.yml")


def median_step_s(lab: str, timeout: float) -> tuple[float, int]:
    """Median seconds a step over the windows that start at step >= FIRST_WINDOW_STEP; waits up to
    timeout for WINDOWS of them (fewer when the run ends first)."""
    deadline = time.monotonic() + timeout
    while True:
        steps = step_times(lab)
        windows = [(at_b - at_a) / (step_b - step_a) for (step_a, at_a), (step_b, at_b) in zip(steps, steps[1:])
                   if step_a >= FIRST_WINDOW_STEP and step_b > step_a]
        if len(windows) >= WINDOWS or time.monotonic() > deadline:
            break
        time.sleep(2)
    if not windows:
        sys.exit(f"{lab}: no step window; raise --max-steps")
    return statistics.median(windows), len(windows)


def wait_until_finished(lab: str, hosts: int, timeout: float) -> None:
    """Until every host's trainer container exited 0 (the run completed)."""
    deadline = time.monotonic() + timeout
    for number in range(1, hosts + 1):
        while not (state := docker("exec", f"{lab}-host-{number}", "docker", "ps", "-a", "--filter",
                                   "label=org.chargpt.node-rank", "--format", "{{.Status}}")).startswith("Exited (0)"):
            if not state or state.startswith("Exited") or time.monotonic() > deadline:
                sys.exit(f"{lab}-host-{number}: the trainer did not complete ({state or 'no trainer container'})")
            time.sleep(2)


def changed_total(run: PlaybookRun) -> int:
    return sum(counts["changed"] for counts in run.recap.values())


def check(run: PlaybookRun, what: str) -> None:
    if run.returncode or not run.recap:
        sys.exit(f"{what} exited {run.returncode} (log {run.log}); it ends:\n{run.tail()}")


def measure(hosts: int, preset: str, max_steps: int, warm_up: bool) -> dict:
    lab_name = f"bench{hosts}"
    overrides = {"max_steps": max_steps, "log_interval": LOG_INTERVAL, "eval_interval": max_steps,
                 "checkpoint_interval": max_steps}
    extra = {"trainer_preset": preset, "trainer_run_id": f"bench-scale-{hosts}", "trainer_wait": False,
             "trainer_overrides": overrides}
    lab = Lab(lab_name, ["-e", json.dumps(extra)])
    lab.command("down")  # from scratch, whatever an earlier run left
    counters = None
    try:
        lab.command("up", "--hosts", str(hosts))
        if warm_up:
            with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="warm-up-") as playbook:
                playbook.write(WARM_UP)
                playbook.flush()
                check(run_playbook(playbook.name, lab.inventory, log_name="bench-scale-warm-up"), "the warm-up")
        with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="floor-") as playbook:
            playbook.write(FLOOR)
            playbook.flush()
            floor_started = time.time()
            floor = run_playbook(playbook.name, lab.inventory, log_name=f"bench-scale-{hosts}-floor")
            floor_s = time.time() - floor_started
        check(floor, "the floor playbook")
        counters = ByteCounters(lab_name)
        sent0, bridge0 = counters.read()
        started = time.time()
        fresh = lab.playbook(log_name=f"bench-scale-{hosts}-fresh")
        fresh_s = time.time() - started
        check(fresh, f"site.yml on {lab_name}")
        first_s = first_step_at(lab_name) - started
        sent1, bridge1 = counters.read()
        step_s, windows = median_step_s(lab_name, timeout=180)
        wait_until_finished(lab_name, hosts, timeout=600)
        status_started = time.time()
        status = lab.playbook("playbooks/status.yml", log_name=f"bench-scale-{hosts}-status")
        status_s = time.time() - status_started
        check(status, f"status.yml on {lab_name}")
        if f"run bench-scale-{hosts}: finished" not in status.text:
            sys.exit(f"status.yml on {lab_name} does not say the run finished:\n{status.tail()}")
        # The fresh run did not wait for the end, so this one fetches the artifacts: the next is idempotent.
        check(lab.playbook(log_name=f"bench-scale-{hosts}-fetch"), f"the fetching run on {lab_name}")
        sent_before_rerun, bridge_before_rerun = counters.read()
        rerun_started = time.time()
        rerun = lab.playbook(log_name=f"bench-scale-{hosts}-rerun")
        rerun_s = time.time() - rerun_started
        check(rerun, f"the re-run on {lab_name}")
        sent2, bridge2 = counters.read()
        if changed_total(rerun):
            print(f"  {hosts} hosts: the re-run changed {rerun.changed_hosts()}: {rerun.changed_tasks()}")
        return {"hosts": hosts, "fresh_to_first_step_s": first_s, "fresh_site_yml_s": fresh_s,
                "status_s": status_s, "rerun_s": rerun_s, "rerun_changed": changed_total(rerun),
                "sent_fresh_bytes": sent1 - sent0, "sent_rerun_bytes": sent2 - sent_before_rerun,
                "bridge_tx_fresh_bytes": bridge1 - bridge0, "bridge_tx_rerun_bytes": bridge2 - bridge_before_rerun,
                "step_s": step_s, "step_windows": windows, "floor_s": floor_s}
    finally:
        if counters is not None:
            counters.remove()
        lab.command("down")


def verdict(ratio: float, target: float) -> str:
    return f"{ratio:.2f}x ({'meets' if ratio <= target else 'misses'} <= {target}x)"


def report(results: list[dict]) -> None:
    print(f"\n{'hosts':>5} | {'fresh to 1st step s':>19} | {'site.yml s':>10} | {'status s':>8} | "
          f"{'re-run s (changed)':>18} | {'sent fresh MB':>13} | {'sent re-run MB':>14} | {'step ms':>7} | "
          f"{'floor s':>7}")
    for row in results:
        print(f"{row['hosts']:>5} | {row['fresh_to_first_step_s']:>19.1f} | {row['fresh_site_yml_s']:>10.1f} | "
              f"{row['status_s']:>8.1f} | {row['rerun_s']:>10.1f} ({row['rerun_changed']:>3}) | "
              f"{row['sent_fresh_bytes'] / 1e6:>13.1f} | "
              f"{row['sent_rerun_bytes'] / 1e6:>14.2f} | {row['step_s'] * 1e3:>7.1f} | {row['floor_s']:>7.1f}")
    print("(bridge tx, for comparison: " + ", ".join(
        f"{row['hosts']} hosts {row['bridge_tx_fresh_bytes'] / 1e6:.1f} MB fresh, "
        f"{row['bridge_tx_rerun_bytes'] / 1e6:.2f} MB re-run" for row in results) + ")")
    base = results[0]
    for row in results[1:]:
        print(f"{row['hosts']}/{base['hosts']} hosts: fresh deploy "
              f"{verdict(row['fresh_to_first_step_s'] / base['fresh_to_first_step_s'], 2.0)}, re-run "
              f"{verdict(row['rerun_s'] / base['rerun_s'], 1.5)}, bytes sent "
              f"{verdict(row['sent_fresh_bytes'] / base['sent_fresh_bytes'], 1.2)}; this machine's floor "
              f"({FLOOR_TASKS} tasks that change nothing) {row['floor_s'] / base['floor_s']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--max-steps", type=int, default=400,
                        help="steps of each run: enough for the step windows, short enough to finish soon")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    print(f"== {args.preset} preset, {args.max_steps} steps; one fresh lab bench<N> at a time")
    results = []
    for number, hosts in enumerate(args.hosts):
        results.append(measure(hosts, args.preset, args.max_steps, warm_up=number == 0))
        row = results[-1]
        print(f"{hosts} hosts: first step {row['fresh_to_first_step_s']:.1f} s after site.yml's start "
              f"(site.yml {row['fresh_site_yml_s']:.1f} s), status {row['status_s']:.1f} s, "
              f"re-run {row['rerun_s']:.1f} s "
              f"changed={row['rerun_changed']}, step {row['step_s'] * 1e3:.1f} ms", flush=True)
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
