"""Filters of the network probe (tasks/main.yml): its table, and the figures past their limits,
each naming the hosts it concerns."""

from __future__ import annotations


def _pairs(results: dict):
    for host, figures in sorted(results["hosts"].items()):
        for peer, result in sorted((figures or {}).get("peers", {}).items()):
            yield host, peer, result


def _aligned(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def _ms(value) -> str:
    return "-" if value is None else f"{float(value):.3f}"


def probe_table(results: dict) -> list[str]:
    limits = results["limits"]
    hosts = sorted(results["hosts"])
    network = {"host": "the hosts' own network"}.get(results.get("network"), "the overlay")
    lines = [f"network probe before run {results['run_id']}: {len(hosts)} hosts, over {network}"]
    pairs = [("from", "to", "rtt ms median", "rtt ms max", "lost", "MTU", "full-MTU datagram")]
    for host, peer, result in _pairs(results):
        crossed = "ok" if result.get("mtu_ok") else "LOST"
        pairs.append((host, peer, _ms(result.get("rtt_ms")), _ms(result.get("rtt_max_ms")),
                      str(result.get("lost", "-")), str(result.get("mtu") or "-"), crossed))
    if len(pairs) > 1:
        lines += _aligned(pairs)
    per_host = [("host", "Gloo interface", "reaches the master", "swarm TCP ports open")]
    for host in hosts:
        figures = results["hosts"][host] or {}
        interface = figures.get("interface") or {}
        checked, closed = figures.get("ports_checked", []), figures.get("ports_closed", [])
        per_host.append((host, f"{interface.get('used', '-')} ({interface.get('configured', '-')})",
                         {True: "yes", False: f"NO (routes over {interface.get('routed')})"}.get(
                             interface.get("reaches_master"), "-"),
                         f"{len(checked) - len(closed)}/{len(checked)}"))
    lines += _aligned(per_host)
    allreduce = results.get("allreduce")
    if allreduce:
        lines.append(f"all-reduce of {allreduce['bytes'] / 1e6:.1f} MB (the run's gradients) across "
                     f"{allreduce['world_size']} hosts: {float(allreduce['time_ms']):.1f} ms, bus bandwidth "
                     f"{float(allreduce['bus_bandwidth_mb_s']):,.1f} MB/s")
    elif len(hosts) > 1:
        lines.append(f"all-reduce across {len(hosts)} hosts: did not complete")
    lines.append(f"limits: round trip <= {float(limits['max_rtt_ms']):g} ms, bus bandwidth >= "
                 f"{float(limits['min_bus_bandwidth_mb_s']):g} MB/s, full-MTU datagrams cross")
    return lines


def probe_problems(results: dict) -> list[str]:
    limits = results["limits"]
    problems = []
    for host, peer, result in _pairs(results):
        if result.get("error"):
            problems.append(f"{host} -> {peer}: {result['error']}")
            continue
        if not result.get("mtu_ok"):
            problems.append(f"{host} -> {peer}: a datagram of the overlay's full MTU ({result.get('mtu')} bytes) did "
                            "not cross with fragmentation forbidden (the path under the overlay carries less)")
        if result.get("rtt_ms") is not None and float(result["rtt_ms"]) > float(limits["max_rtt_ms"]):
            problems.append(f"{host} -> {peer}: round trip {float(result['rtt_ms']):.3f} ms, above the limit of "
                            f"{float(limits['max_rtt_ms']):g} ms")
    for host, figures in sorted(results["hosts"].items()):
        figures = figures or {}
        interface = figures.get("interface") or {}
        if interface and not interface.get("reaches_master"):
            problems.append(f"{host}: GLOO_SOCKET_IFNAME={interface.get('used')} is not the interface that reaches "
                            f"the master ({interface.get('routed')})")
        for endpoint in figures.get("ports_closed", []):
            problems.append(f"{host} -> {endpoint}/tcp (swarm) does not answer")
    hosts = sorted(results["hosts"])
    allreduce = results.get("allreduce")
    if len(hosts) > 1 and not allreduce:
        error = results.get("allreduce_error") or "no result"
        problems.append(f"the all-reduce across {', '.join(hosts)} did not complete: {error}")
    elif allreduce and float(allreduce["bus_bandwidth_mb_s"]) < float(limits["min_bus_bandwidth_mb_s"]):
        problems.append(f"the all-reduce across {', '.join(hosts)}: bus bandwidth "
                        f"{float(allreduce['bus_bandwidth_mb_s']):,.1f} MB/s, below the limit of "
                        f"{float(limits['min_bus_bandwidth_mb_s']):g} MB/s")
    return problems


class FilterModule:
    def filters(self):
        return {"chargpt_probe_table": probe_table, "chargpt_probe_problems": probe_problems}
