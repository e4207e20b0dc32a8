"""The overlay against the hosts' own network (not a test: it prints figures), on the lab, in one run:

1. a Gloo all-reduce of the `original` preset's gradients (one float32 per parameter) across 2 and
   across 3 hosts, over the swarm's overlay and over the host network, alternately, --trials times
   each: the bus bandwidth (what NCCL's tests print: 2(n-1)/n of the data per second) of
   `chargpt probe allreduce`, the code the deployment's network probe runs, in containers of the
   deployed trainer image;
2. the `cpu` preset's step time on 2 hosts, deployed by site.yml with cluster_network overlay and
   host, alternately: tokens/s the median of metrics.jsonl's windows after step 50.

The lab must be up with three hosts and deployed once (swarm, overlay and image in place):

    LAB_NAME=bench lab/lab up --hosts 3
    ansible-playbook -i inventory/bench site.yml --skip-tags network_probe
    python benchmarks/bench_network.py --inventory inventory/bench [--trials 3] [--steps 300]

Lab only: it reaches the simulated hosts with `docker exec` on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ddp import two_hosts as deployed_tokens_per_s

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests"))
from harness.inventory import Inventory  # noqa: E402  (the tests' inventory reader and writer)

PORT = 29450
PREFIX = "bench-allreduce-"


def hosts_of(inventory: Path) -> dict[str, str]:
    """{host: its address}, master first, then the workers in inventory order."""
    listed = json.loads(subprocess.run(["ansible-inventory", "-i", str(inventory), "--list"], cwd=REPO_ROOT,
                                       capture_output=True, text=True, check=True).stdout)
    names = listed["master"]["hosts"] + listed["workers"]["hosts"]
    return {name: listed["_meta"]["hostvars"][name]["ansible_host"] for name in names}


def on_host(host: str, *command: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", "exec", host, *command], capture_output=True, text=True, check=check)


def original_gradient_bytes() -> int:
    checked = subprocess.run([sys.executable, "-m", "chargpt", "check", "--preset", "original", "--data",
                              str(REPO_ROOT / "data" / "input.txt"), "--json"], capture_output=True, text=True,
                             check=True, env={"PYTHONPATH": str(REPO_ROOT / "app"), "PATH": "/usr/bin:/bin"})
    return json.loads(checked.stdout)["gradient_bytes"]


def allreduce(hosts: dict[str, str], image: str, overlay: str, network: str, nbytes: int, iterations: int) -> dict:
    """One all-reduce across hosts over network (overlay or host): rank 0's figures."""
    names = list(hosts)
    processes = []
    for rank, name in enumerate(names):
        if network == "host":
            where = ["--network", "host"] + [f"--add-host={PREFIX}{other}:{address}"
                                             for other, address in hosts.items()]
        else:
            where = ["--network", overlay, "--network-alias", f"{PREFIX}{name}"]
        on_host(name, "docker", "rm", "-f", f"{PREFIX}{name}", check=False)
        command = ["docker", "exec", name, "docker", "run", "--rm", "--name", f"{PREFIX}{name}", *where,
                   "-e", f"RANK={rank}", "-e", f"WORLD_SIZE={len(names)}", "-e", f"MASTER_ADDR={PREFIX}{names[0]}",
                   "-e", f"MASTER_PORT={PORT}", "--entrypoint", "python", image, "-m", "chargpt", "probe",
                   "allreduce", "--bytes", str(nbytes), "--iterations", str(iterations), "--timeout", "120"]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=300) for process in processes]
    if any(process.returncode for process in processes):
        sys.exit(f"the all-reduce over {network} failed: {[error[-800:] for _, error in outputs]}")
    return json.loads(outputs[0][0].strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inventory", type=Path, required=True, help="a lab inventory of three hosts, deployed")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=10, help="timed all-reduces a trial")
    parser.add_argument("--steps", type=int, default=300, help="training steps a trial (0: no step-time trials)")
    parser.add_argument("--skip-allreduce", action="store_true", help="only the step-time trials")
    args = parser.parse_args()

    hosts = hosts_of(args.inventory)
    if len(hosts) < 3:
        sys.exit(f"{args.inventory} has {len(hosts)} hosts: bring the lab up with --hosts 3")
    master = next(iter(hosts))
    image = on_host(master, "docker", "inspect", "--format", "{{.Config.Image}}",
                    "chargpt-trainer-rank0").stdout.strip()
    overlay = json.loads(subprocess.run(["ansible-inventory", "-i", str(args.inventory), "--host", master],
                                        capture_output=True, text=True, check=True).stdout).get(
        "cluster_overlay_network", "pytorch-dist-overlay-net")
    nbytes = original_gradient_bytes()
    print(f"image {image}; all-reduce of {nbytes / 1e6:.1f} MB (the original preset's gradients), "
          f"{args.iterations} timed a trial, {args.trials} trials")

    bandwidth: dict[tuple[int, str], list[float]] = {}
    for trial in range(0 if args.skip_allreduce else args.trials):
        for size in (2, 3):
            for network in (("overlay", "host") if trial % 2 == 0 else ("host", "overlay")):
                chosen = dict(list(hosts.items())[:size])
                result = allreduce(chosen, image, overlay, network, nbytes, args.iterations)
                bandwidth.setdefault((size, network), []).append(result["bus_bandwidth_mb_s"])
                print(f"trial {trial + 1}: {size} hosts over {network}: {result['time_ms']} ms, "
                      f"bus bandwidth {result['bus_bandwidth_mb_s']} MB/s", flush=True)

    tokens: dict[str, list[float]] = {}
    if args.steps:
        two_hosts = Inventory.read(args.inventory).without(list(hosts)[2]).write(
            Path(tempfile.mkdtemp(prefix="bench-network-")) / "two-hosts.yml")
        for trial in range(args.trials):
            for network in (("overlay", "host") if trial % 2 == 0 else ("host", "overlay")):
                # A new run id each time: site.yml leaves a finished run alone.
                run_id = f"bench-network-{time.strftime('%H%M%S')}-{network}-{trial + 1}"
                tokens.setdefault(network, []).append(deployed_tokens_per_s(
                    two_hosts, args.steps, run_id, {"cluster_network": network}, "--skip-tags", "network_probe"))
                print(f"trial {trial + 1}: cpu preset on 2 hosts over {network}: "
                      f"{tokens[network][-1]:,.0f} tokens/s", flush=True)

    if bandwidth:
        print("\n| hosts | overlay bus bandwidth MB/s | host network MB/s | host / overlay |")
        print("| --- | --- | --- | --- |")
    for size in (2, 3) if bandwidth else ():
        overlay_mb, host_mb = (statistics.median(bandwidth[(size, net)]) for net in ("overlay", "host"))
        print(f"| {size} | {overlay_mb:.1f} ({', '.join(map(str, bandwidth[(size, 'overlay')]))}) | "
              f"{host_mb:.1f} ({', '.join(map(str, bandwidth[(size, 'host')]))}) | {host_mb / overlay_mb:.2f}x |")
    if tokens:
        overlay_tps, host_tps = (statistics.median(tokens[net]) for net in ("overlay", "host"))
        print(f"\ncpu preset on 2 hosts, tokens/s: overlay {overlay_tps:,.0f}, host {host_tps:,.0f} "
              f"({host_tps / overlay_tps:.2f}x)")


if __name__ == "__main__":
    main()
