"""Rules about a run that several roles apply, written once: the line of a log that says what went
wrong, and whether a summary is that of a run finished as deployed."""

from __future__ import annotations

import re

# "error" in any case; torchrun's summary of a failed attempt says FAILED.
ERROR = re.compile(r"(?i:error)|FAILED")


def error_line(lines: list[str]) -> str:
    """The last line that reports an error; empty if none."""
    return next((line for line in reversed(lines or []) if ERROR.search(line)), "")


def finished_as(summary: dict, world_size, experiment: str | None = None) -> bool:
    """Whether summary.json says the run is complete at this world size and, when experiment is given,
    as this experiment (the trainer's digest of the corpus and the training settings)."""
    summary = summary or {}
    return (summary.get("status") == "complete" and int(summary.get("world_size") or 0) == int(world_size)
            and (experiment is None or summary.get("experiment") == experiment))


class FilterModule:
    def filters(self):
        return {"chargpt_error_line": error_line, "chargpt_finished_as": finished_as}
