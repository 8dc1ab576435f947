"""Atomic JSON writes and clear read errors (plans, sensitivity tables, allocations)."""

from __future__ import annotations

import os

import pytest

from bitsfusion import jsonfile
from bitsfusion.errors import ConfigError


def test_round_trip_and_no_temporary_left(tmp_path) -> None:
    path = jsonfile.write_json(tmp_path / "a.json", {"x": [1, 2.5, None]})
    assert jsonfile.read_json(path, "thing") == {"x": [1, 2.5, None]}
    assert os.listdir(tmp_path) == ["a.json"]


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch) -> None:
    path = jsonfile.write_json(tmp_path / "a.json", {"old": True})

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(jsonfile.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        jsonfile.write_json(path, {"new": True})
    assert jsonfile.read_json(path, "thing") == {"old": True}
    assert os.listdir(tmp_path) == ["a.json"]


def test_missing_and_malformed_name_the_file_and_fix(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.json: plan file not found; write one first"):
        jsonfile.read_json(tmp_path / "nope.json", "plan file", "write one first")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"bad\.json: not a valid JSON plan file"):
        jsonfile.read_json(tmp_path / "bad.json", "plan file")
