"""The CLI as a user runs it: verbs, help, and clear errors instead of tracebacks."""

import subprocess
import sys

import pytest

from launch.cli import main

# Each test runs the CLI as a user does: in a process of its own, or through the demo corpus.
pytestmark = pytest.mark.integration


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_lists_the_verbs():
    result = run_cli("--help")
    assert result.returncode == 0
    for verb in ("demo", "demo-corpus", "prepare", "config"):
        assert verb in result.stdout


def test_demo_corpus_then_prepare(tmp_path, capsys):
    out = tmp_path / "corpus"
    assert main(["demo-corpus", "--out", str(out), "train_dialogues=3", "dev_dialogues=1", "test_dialogues=1",
                 "clip_format=wav"]) == 0
    assert (out / "config.toml").is_file()
    assert main(["prepare", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "no flagged clips" in printed
    train_line = next(line for line in printed.splitlines() if line.startswith("train"))
    assert train_line.split()[2] == "3"


@pytest.mark.parametrize(
    "args, message",
    [
        (["prepare", "/nonexistent/MELD.Raw"], "does not exist"),
        (["demo-corpus", "--out", "/tmp/unused", "train_dialogs=3"], "Did you mean 'train_dialogues'"),
        (["config", "nothing"], "invalid choice"),
        (["extract", "/nonexistent/MELD.Raw"], "corpus folder /nonexistent/MELD.Raw does not exist"),
        (["sweep", "--seeds", "0-2", "store=/nonexistent/store"], "feature store /nonexistent/store does not exist"),
    ],
)
def test_user_errors_are_one_clear_line(args, message):
    result = run_cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
