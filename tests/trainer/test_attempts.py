"""config.json keeps the history of a run's attempts."""

import json
from datetime import datetime, timedelta, timezone

import pytest

from chargpt.attempts import read_attempts, record_attempt
from chargpt.config import build_config


def test_each_start_appends_an_attempt(tmp_path):
    smoke = build_config("smoke", environ={})
    longer = build_config("smoke", {"max_steps": "120", "allow_config_change": "max_steps"}, environ={})
    record_attempt(tmp_path, smoke, 2, None, "a" * 64, warn=pytest.fail)
    record_attempt(tmp_path, longer, 3, 80, "a" * 64, warn=pytest.fail)
    first, second = json.loads((tmp_path / "config.json").read_text())["attempts"]
    assert first["config"] == smoke.to_dict() and second["config"] == longer.to_dict()
    assert (first["world_size"], first["resumed_from_step"]) == (2, None)
    assert (second["world_size"], second["resumed_from_step"], second["corpus_sha256"]) == (3, 80, "a" * 64)
    started = datetime.fromisoformat(second["started_at"])
    assert started.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - started) < timedelta(minutes=1)
    assert [path.name for path in tmp_path.iterdir()] == ["config.json"]  # no temp file left


def test_a_config_json_of_the_older_format_becomes_the_first_attempt(tmp_path):
    old = build_config("smoke", environ={}).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(old))
    record_attempt(tmp_path, build_config("smoke", environ={}), 1, 40, "b" * 64, warn=pytest.fail)
    attempts = read_attempts(tmp_path / "config.json", warn=pytest.fail)
    assert attempts[0] == {"started_at": None, "world_size": None, "resumed_from_step": None,
                           "corpus_sha256": None, "config": old}
    assert attempts[1]["resumed_from_step"] == 40 and len(attempts) == 2


@pytest.mark.parametrize("content", ["{torn", "[1, 2]"])
def test_an_unusable_config_json_starts_a_new_history_with_a_warning(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    warnings = []
    record_attempt(tmp_path, build_config("smoke", environ={}), 1, None, "c" * 64, warn=warnings.append)
    assert len(json.loads((tmp_path / "config.json").read_text())["attempts"]) == 1
    assert len(warnings) == 1 and "config.json" in warnings[0]
