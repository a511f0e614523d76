"""The checkpoint manager on its own: DeepSpeed engines (ZeRO 0-2) saved and restored without unpickling,
progress.json validated and rebuilt, rotation, and run-folder verification."""

import io
import json

import pytest
import torch

from model.checkpoint import MANIFEST_NAME, RunFolderError, checkpoint_tag, require_supported
from model.checkpoint_files import plain_state, rebuild_like
from model.run_folder import RunFolder


def make_engine(zero_stage: int, seed: int = 0):
    import deepspeed

    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Dropout(0.2), torch.nn.Linear(7, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (1 + step))
    config = {"train_batch_size": 4, "train_micro_batch_size_per_gpu": 4, "gradient_clipping": 1.0,
              "zero_optimization": {"stage": zero_stage}, "zero_allow_untested_optimizer": True}
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


def steps(engine, first: int, count: int) -> list[float]:
    losses = []
    for step in range(first, first + count):
        inputs = torch.Generator().manual_seed(step)
        x, y = torch.randn(4, 5, generator=inputs), torch.randint(0, 3, (4,), generator=inputs)
        loss = torch.nn.functional.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


@pytest.mark.integration
@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_an_engine_resumes_bit_identically_from_files_a_weights_only_load_accepts(single_process, zero_stage, tmp_path):
    reference = make_engine(zero_stage)
    expected = steps(reference, 0, 6)
    interrupted = make_engine(zero_stage)
    assert steps(interrupted, 0, 3) == expected[:3]
    checkpoints = RunFolder(tmp_path).checkpoints()
    checkpoints.save(interrupted, checkpoint_tag(1, 3), client_state={"note": "x"},
                     rank_state={"partial": torch.tensor(2.5, dtype=torch.float64)}, end_of_epoch=False, best_epoch=0)
    torch.manual_seed(999)  # the checkpoint's RNG state must replace whatever this process has
    resumed = make_engine(zero_stage, seed=123)
    restored = checkpoints.restore(resumed)
    assert restored.tag == "epoch-0001-step-00003" and restored.client_state == {"note": "x"}
    assert restored.rank_state["partial"].item() == 2.5
    assert resumed.global_steps == 3
    assert steps(resumed, 3, 3) == expected[3:]
    for (name, ours), theirs in zip(resumed.module.state_dict().items(), reference.module.state_dict().values()):
        assert torch.equal(ours, theirs), name
    # DeepSpeed's own state dict is refused by a weights-only load; the plain form the files hold is not.
    state = resumed.optimizer.state_dict()
    if zero_stage:
        with pytest.raises(Exception, match="Weights only load failed"):
            torch.load(saved(state), weights_only=True)
    plain = torch.load(saved(plain_state(state, "optimizer")), weights_only=True)
    rebuilt = rebuild_like(plain, state)
    assert {key: type(value) for key, value in rebuilt.items()} == {key: type(value) for key, value in state.items()}


@pytest.mark.integration
def test_zero3_is_refused_before_a_step_is_taken(single_process):
    with pytest.raises(RunFolderError, match="ZeRO stage 3 partitions the weights"):
        require_supported(make_engine(3))


def saved(obj) -> io.BytesIO:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.integration
def test_rotation_keeps_the_two_latest_and_the_best(single_process, tmp_path):
    engine = make_engine(0)
    checkpoints = RunFolder(tmp_path).checkpoints()
    for epoch, best in ((1, 1), (2, 1), (3, 1), (4, 4)):
        checkpoints.save(engine, checkpoint_tag(epoch), client_state={}, rank_state={}, end_of_epoch=True,
                         best_epoch=best)
        if epoch == 3:
            kept = sorted(p.name for p in checkpoints.folder.iterdir() if p.is_dir())
            assert kept == ["epoch-0001", "epoch-0002", "epoch-0003"]
    progress = checkpoints.progress()
    assert progress.latest == ["epoch-0004", "epoch-0003"] and progress.best == "epoch-0004"
    assert sorted(p.name for p in checkpoints.folder.iterdir() if p.is_dir()) == ["epoch-0003", "epoch-0004"]
    # Without progress.json the checkpoints' own manifests say the same; an interrupted save (no manifest) is not one.
    (checkpoints.folder / "epoch-0005").mkdir()
    checkpoints.progress_path.unlink()
    rebuilt = checkpoints.progress()
    assert (rebuilt.latest, rebuilt.best, rebuilt.best_epoch) == (["epoch-0004", "epoch-0003"], "epoch-0004", 4)
    checkpoints.keep_only_best()
    assert sorted(p.name for p in checkpoints.folder.iterdir() if p.is_dir()) == ["epoch-0004"]
    assert json.loads((checkpoints.folder / "epoch-0004" / MANIFEST_NAME).read_text())["files"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "not a JSON object"),
        ('{"format": 2, "latest": ["epoch-0001"], "best": "epoch-0001", "best_epoch": 1}', "format 2"),
        ('{"format": 1, "latest": "epoch-0001", "best": "epoch-0001", "best_epoch": 1}', "'latest' must be a list"),
        ('{"format": 1, "latest": ["../../x"], "best": null, "best_epoch": 0}', "'../../x' is not a checkpoint name"),
        ('{"format": 1, "latest": ["epoch-0002"], "best": "epoch-0001", "best_epoch": 2}', "does not match"),
        ('{"format": 1, "latest": ["epoch-0002"], "best": "epoch-0001", "best_epoch": true}', "whole number"),
        ("{not json", "cannot be read (JSONDecodeError"),
    ],
)
def test_progress_json_is_validated_when_read(content, message, tmp_path):
    checkpoints = RunFolder(tmp_path).checkpoints()
    checkpoints.folder.mkdir()
    checkpoints.progress_path.write_text(content)
    with pytest.raises(RunFolderError, match="rebuilds it from the checkpoints") as error:
        checkpoints.progress()
    assert message in str(error.value) and str(checkpoints.progress_path) in str(error.value)
    assert "\n" not in str(error.value)


def test_verify_names_each_problem_with_its_repair(tmp_path):
    assert RunFolder(tmp_path / "absent").verify() == [
        f"{tmp_path / 'absent'} does not exist; train a run into it: cmroberta train STORE --run-dir "
        f"{tmp_path / 'absent'}"
    ]
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.toml").write_text('store = "/stores/s"\n[model]\nvariant = "bimodal"\n')
    (run_dir / "checkpoints" / "progress.json").write_text("garbage")
    (run_dir / "test_metrics.json").write_text("{}")
    problems = RunFolder(run_dir).verify()
    assert len(problems) == 2, problems
    assert problems[0].endswith(f"rm {run_dir}/checkpoints/progress.json && cmroberta train /stores/s --run-dir "
                                f"{run_dir} --resume")
    assert problems[1] == (f"{run_dir}/test_metrics.json is damaged or does not match the selected checkpoint; "
                           f"score it again: cmroberta evaluate {run_dir}")
    (run_dir / "config.toml").write_text("store = ")
    assert "cannot be read as a run config" in RunFolder(run_dir).verify()[0]
