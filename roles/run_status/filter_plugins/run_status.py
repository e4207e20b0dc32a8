"""Filters of playbooks/status.yml: the run's overall state from every host's row, and the table."""

from __future__ import annotations

from datetime import datetime

# A container that exits 2 refused its settings, one that exits 4 ran a run that diverged and stopped for
# good: its supervisor leaves either stopped (RestartPreventExitStatus).
REFUSED_EXIT_CODE = 2
DIVERGED_EXIT_CODE = 4
# A container stopped on request (docker stop, teardown) after its trainers checkpointed the step they
# were at: its supervisor leaves it stopped too (the image's entrypoint).
STOPPED_EXIT_CODE = 143


def host_failed(row: dict) -> bool:
    """Stopped for good: exited non-zero and its supervisor will not start it again."""
    stopped = row["container"] not in ("running", "restarting", "created")
    given_up = (row["supervisor"] in ("failed", "inactive")
                or row["exit_code"] in (REFUSED_EXIT_CODE, DIVERGED_EXIT_CODE))
    return stopped and row["exit_code"] not in (0, None, STOPPED_EXIT_CODE) and given_up


def host_stopped(row: dict) -> bool:
    return row["container"] == "exited" and row["exit_code"] == STOPPED_EXIT_CODE


def started_epoch(started_at: str | None) -> float | None:
    """Seconds since the epoch of Docker's State.StartedAt (RFC 3339, nanoseconds)."""
    if not started_at or started_at.startswith("0001-"):
        return None
    stamp, _, fraction = started_at.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{stamp}.{(fraction or '0')[:6].ljust(6, '0')}+00:00").timestamp()


def trained_since_start(row: dict) -> bool:
    """Whether the trainer wrote its progress after its container last started."""
    started = started_epoch(row.get("started_at"))
    return started is None or row.get("updated_at") is None or float(row["updated_at"]) >= started


def run_state(rows: list[dict], finished: bool) -> str:
    """finished, failed, stopped (a host's trainer was stopped on request: the run waits for it),
    recovering (a host's trainer is down or was restarted and has not logged a step since), starting
    (no host has logged a step of this run) or training."""
    if finished:
        return "finished"
    if any(host_failed(row) for row in rows):
        return "failed"
    if any(host_stopped(row) for row in rows):
        return "stopped"
    if any(row["container"] != "running" for row in rows):
        return "recovering"
    if any(row["step"] is not None and not trained_since_start(row) for row in rows):
        return "recovering"
    if all(row["step"] is None for row in rows):
        return "starting"
    if any(row["step"] is None for row in rows):
        return "recovering"
    return "training"


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _shown(value, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


COLUMNS = ("host", "rank", "container", "restarts", "step", "loss", "tokens/s", "eta", "checkpoint", "updated")


def status_table(rows: list[dict]) -> list[str]:
    """One line per host under a header, columns aligned, `-` where a host has no figure; then the
    last error line of each host whose trainer exited with an error."""
    cells = [COLUMNS]
    for row in sorted(rows, key=lambda row: int(row["node_rank"])):
        container = row["container"] if row["exit_code"] in (None, 0) or row["container"] == "running" \
            else f"{row['container']}({row['exit_code']})"
        step = "-" if row["step"] is None else f"{row['step']}/{row['max_steps']}"
        cells.append((row["host"], str(row["node_rank"]), container, str(row["restarts"]), step,
                      _shown(row["loss"], "{:.4f}"), _shown(row["tokens_per_s"], "{:,.0f}"),
                      _duration(row["eta_s"]), _shown(row["checkpoint"]),
                      "-" if row["age_s"] is None else f"{_duration(row['age_s'])} ago"))
    widths = [max(len(line[column]) for line in cells) for column in range(len(COLUMNS))]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in cells]
    return table + [f"{row['host']}: {row['error']}" for row in sorted(rows, key=lambda row: int(row["node_rank"]))
                    if row.get("error")]


def failure_message(rows: list[dict], run_id: str) -> str:
    """Why the run failed, host by host: each host whose trainer has an error line or exited non-zero."""
    failed = [f"{row['host']} ({row['container']}, exit code {row['exit_code']}): "
              f"{row.get('error') or 'no error line in its log'}"
              for row in sorted(rows, key=lambda row: int(row["node_rank"]))
              if row.get("error") or row["exit_code"] not in (None, 0)]
    return f"run {run_id} failed: " + "; ".join(failed)


class FilterModule:
    def filters(self):
        return {"chargpt_run_state": run_state, "chargpt_status_table": status_table,
                "chargpt_failure_message": failure_message}
