"""Numbers a config file or override may hold that torch cannot use: each refused with one line naming the key."""

import pytest

from cluster.config import ConfigError, load_config
from launch.cli import main

BAD_VALUES = {
    "nan weight decay": ("train.weight_decay=nan", "config key 'train.weight_decay' must be a finite number, not nan"),
    "inf learning rate": (
        "train.learning_rate=inf",
        "config key 'train.learning_rate' must be a finite number, not inf",
    ),
    "-inf dropout": ("model.dropout=-inf", "config key 'model.dropout' must be a finite number, not -inf"),
    "overflowing float": (
        "train.learning_rate=1e400",
        "config key 'train.learning_rate' must be a finite number, not inf",
    ),
    "20-digit seed": (
        "seed=12345678901234567890",
        "config key 'seed' is 12345678901234567890, outside the 64-bit integer range; use a smaller number",
    ),
    "int past int64": ("train.max_epochs=9223372036854775808", "config key 'train.max_epochs' is 9223372036854775808"),
    "int below int64": ("seed=-9223372036854775809", "config key 'seed' is -9223372036854775809, outside"),
}


def run_config_class():
    from model.run_config import RunConfig

    return RunConfig


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_an_unusable_number_is_refused_naming_its_key(case):
    override, message = BAD_VALUES[case]
    with pytest.raises(ConfigError) as caught:
        load_config(run_config_class(), None, ['store="/s"', override])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_the_largest_seed_is_accepted_and_the_next_refused_in_one_line():
    """Seeds feed every generator a run seeds (numpy takes at most 2**32 - 1) and SLURM array indices, so a run
    seed is bounded at 2**31 - 1 (`model.run_config.MAX_SEED`) rather than at int64."""
    assert load_config(run_config_class(), None, ['store="/s"', f"seed={2**31 - 1}"]).seed == 2**31 - 1
    with pytest.raises(ConfigError) as caught:
        load_config(run_config_class(), None, ['store="/s"', f"seed={2**31}"])
    assert str(caught.value) == f"seed must be between 0 and {2**31 - 1}, not {2**31}"


def test_nan_in_a_toml_file_is_refused_naming_its_key(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('store = "/s"\n[train]\nweight_decay = nan\n')
    with pytest.raises(ConfigError, match="'train.weight_decay' must be a finite number, not nan"):
        load_config(run_config_class(), path)


def test_an_extraction_number_out_of_range_is_refused():
    from extract.extract_config import ExtractConfig

    with pytest.raises(ConfigError, match="'max_audio_seconds' must be a finite number, not inf"):
        load_config(ExtractConfig, None, ['corpus="/c"', "max_audio_seconds=inf"])
    with pytest.raises(ConfigError, match="'shard_dialogues' is 100000000000000000000, outside the 64-bit"):
        load_config(ExtractConfig, None, ['corpus="/c"', "shard_dialogues=100000000000000000000"])


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    assert main(["train", str(tmp_path), "train.weight_decay=nan"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "cmroberta train: error: config key 'train.weight_decay' must be a finite number, not nan"
