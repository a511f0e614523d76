"""Whole-or-absent files and one-writer folders (`cluster.durable_files`)."""

import json
import multiprocessing
import os

import pytest

from cluster.durable_files import (
    LockHeldError,
    atomic_write_json,
    atomic_write_json_lines,
    exclusive_lock,
    is_temp_file,
    unique_temp_path,
)


def _hold_lock(folder, ready, release):
    with exclusive_lock(folder, "run folder"):
        ready.set()
        release.wait(30)


def test_a_second_writer_is_told_the_holders_pid_and_host(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(LockHeldError, match=rf"run folder {tmp_path} is in use by pid {holder.pid} on host"):
            with exclusive_lock(tmp_path, "run folder"):
                pass
    finally:
        release.set()
        holder.join(30)
    with exclusive_lock(tmp_path, "run folder", wait_seconds=5):
        pass


def test_a_killed_holder_leaves_the_folder_free(tmp_path):
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, ready, release))
    holder.start()
    assert ready.wait(60)
    holder.kill()
    holder.join(30)
    with exclusive_lock(tmp_path, "feature store"):
        pass


def test_atomic_writes_leave_only_the_finished_file(tmp_path):
    atomic_write_json(tmp_path / "progress.json", {"latest": "a"})
    atomic_write_json(tmp_path / "progress.json", {"latest": "b"})
    atomic_write_json_lines(tmp_path / "metrics.jsonl", [{"epoch": 1}, {"epoch": 2}])
    assert json.loads((tmp_path / "progress.json").read_text()) == {"latest": "b"}
    assert [json.loads(line)["epoch"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl", "progress.json"]


def test_temporary_names_are_unique_and_recognisable(tmp_path):
    names = {unique_temp_path(tmp_path / "train-0000.h5") for _ in range(50)}
    assert len(names) == 50
    assert all(is_temp_file(name) and name.parent == tmp_path for name in names)
    assert not is_temp_file(tmp_path / "train-0000.h5")
