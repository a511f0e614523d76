"""`cmroberta verify PATH` on whole and damaged stores, run folders and sweep folders: what it prints and its status."""

import json
import shutil

import pytest

from cluster.config import load_config
from extract.feature_store import build_store_from_arrays
from launch.cli import main
from tests.learnable_store import write_learnable_store
from tests.tiny_runs import tiny_split


@pytest.fixture
def store_dir(tmp_path):
    arrays = {"train": tiny_split("train"), "dev": tiny_split("dev")}
    return build_store_from_arrays(tmp_path / "s-000000000000", arrays, {"corpus": "/data/MELD.Raw"}, shard_dialogues=1)


def verify(path, capsys) -> tuple[int, list[str], str]:
    status = main(["verify", str(path)])
    captured = capsys.readouterr()
    return status, captured.out.strip().splitlines(), captured.err.strip()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A real finished run (frozen features, a tiny head): checkpoints, progress.json and metrics to damage."""
    from model.run_config import RunConfig
    from model.train import train

    store = write_learnable_store(tmp_path_factory.mktemp("features") / "verify-000000000000")
    overrides = ["text_mode=frozen", "model.hidden_size=8", "model.feedforward_size=16", "model.classifier_hidden=16",
                 "train.max_epochs=2", "train.batch_dialogues=16", f"store={json.dumps(str(store))}"]
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(load_config(RunConfig, None, overrides), run_dir)
    return run_dir


def run_folder(tmp_path, trained_run):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns(".lock"))
    return run_dir


def trained_store(run_dir) -> str:
    from model.run_config import RunConfig

    return load_config(RunConfig, run_dir / "config.toml").store


def test_a_whole_store_is_well(store_dir, capsys):
    status, out, _ = verify(store_dir, capsys)
    assert status == 0 and out == [f"store {store_dir}: all is well"]


def test_a_damaged_store_names_the_shard_and_the_repair(store_dir, capsys):
    path = store_dir / "shards/dev-00001.h5"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x10
    path.write_bytes(bytes(data))
    status, out, _ = verify(store_dir, capsys)
    assert status == 1
    assert out[0].startswith(f"{store_dir}: shards/dev-00001.h5 does not match its sha256 in the manifest; repair: ")
    assert "cmroberta extract /data/MELD.Raw --config" in out[0]
    assert out[-1] == f"store {store_dir}: 1 problem(s)"


def test_an_incomplete_store_names_each_missing_shard(store_dir, capsys):
    manifest = json.loads((store_dir / "manifest.json").read_text())
    manifest["shards"] = manifest["shards"][:1]
    (store_dir / "manifest.json").write_text(json.dumps(manifest))
    status, out, _ = verify(store_dir, capsys)
    assert status == 1
    assert [line.split("; repair")[0] for line in out[:-1]] == [
        f"{store_dir}: shards/dev-00001.h5 is planned but not written",
        f"{store_dir}: shards/train-00000.h5 is planned but not written",
        f"{store_dir}: shards/train-00001.h5 is planned but not written",
    ]


@pytest.mark.integration
def test_a_whole_run_folder_is_well(tmp_path, trained_run, capsys):
    run_dir = run_folder(tmp_path, trained_run)
    status, out, _ = verify(run_dir, capsys)
    assert status == 0 and out == [f"run {run_dir}: all is well"]


@pytest.mark.integration
def test_a_torn_metrics_line_is_named_with_the_command_that_redoes_it(tmp_path, trained_run, capsys):
    run_dir = run_folder(tmp_path, trained_run)
    with open(run_dir / "metrics.jsonl", "a") as stream:
        stream.write('{"epoch": 3, "dev_lo')
    status, out, _ = verify(run_dir, capsys)
    assert status == 1
    assert out[0] == (
        f"{run_dir}: metrics.jsonl line 3 is not valid JSON (Unterminated string starting at); "
        f"repair: cmroberta train {trained_store(run_dir)} --run-dir {run_dir} --resume"
    )


@pytest.mark.integration
def test_a_garbage_test_metrics_file_names_evaluate(tmp_path, trained_run, capsys):
    run_dir = run_folder(tmp_path, trained_run)
    (run_dir / "test_metrics.json").write_bytes(b"\x00\x01garbage")
    status, out, _ = verify(run_dir, capsys)
    assert status == 1
    assert out[0] == (
        f"{run_dir}: {run_dir}/test_metrics.json is damaged or does not match the selected checkpoint; "
        f"score it again: cmroberta evaluate {run_dir}"
    )


@pytest.mark.integration
def test_a_run_config_with_a_typo_is_named(tmp_path, trained_run, capsys):
    run_dir = run_folder(tmp_path, trained_run)
    (run_dir / "config.toml").write_text('store = "/x"\nseeed = 3\n')
    status, out, _ = verify(run_dir, capsys)
    assert status == 1
    assert "config.toml cannot be read as a run config (unknown config key 'seeed'. Did you mean 'seed'?" in out[0]


def sweep_folder(tmp_path, trained_run):
    sweep = tmp_path / "sweep"
    (sweep / "runs").mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"configurations": {"abc": {"label": "base"}}, "seeds": [0, 1]}))
    for seed in (0, 1):
        run_dir = run_folder(tmp_path / f"r{seed}", trained_run)
        run_dir.rename(sweep / "runs" / f"abc-seed{seed}")
        (sweep / "runs" / f"abc-seed{seed}" / "run.json").write_text(
            json.dumps({"label": "base", "seed": seed, "config_hash": "abc"})
        )
    return sweep


@pytest.mark.integration
def test_a_whole_sweep_is_well(tmp_path, trained_run, capsys):
    sweep = sweep_folder(tmp_path, trained_run)
    status, out, _ = verify(sweep, capsys)
    assert status == 0 and out == [f"sweep {sweep}: all is well"]


@pytest.mark.integration
def test_a_sweep_with_a_torn_submission_record_and_a_lost_run(tmp_path, trained_run, capsys):
    sweep = sweep_folder(tmp_path, trained_run)
    (sweep / "runs/abc-seed0/submission.json").write_text('{"job_id": "12')
    shutil.rmtree(sweep / "runs/abc-seed1")
    status, out, _ = verify(sweep, capsys)
    assert status == 1
    assert out[0].startswith(f"{sweep}: runs/abc-seed0: submission.json line 1 is not valid JSON")
    assert out[1].startswith(
        f"{sweep}: 1 run folders, the sweep asked for 2; repair: run the `cmroberta sweep` command"
    )


def test_a_folder_that_is_none_of_the_three_is_one_line_and_status_2(tmp_path, capsys):
    status, out, err = verify(tmp_path, capsys)
    assert status == 2 and out == []
    assert err == (
        f"cmroberta verify: error: {tmp_path} is not a feature store (manifest.json), a sweep folder (sweep.json) "
        "or a run folder (config.toml)"
    )
    status, _, err = verify(tmp_path / "nowhere", capsys)
    assert status == 2 and err == f"cmroberta verify: error: {tmp_path / 'nowhere'} does not exist or is not a folder"
