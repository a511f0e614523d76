"""The typed config loader: defaults, TOML, overrides, validation errors and the resolved round trip."""

from dataclasses import dataclass, field
from typing import Literal

import pytest
import tomllib

from cluster.config import (
    ConfigError,
    apply_overrides,
    describe,
    from_dict,
    load_config,
    parse_override,
    to_toml,
    write_resolved_config,
)
from extract.demo_corpus import DemoCorpusConfig


@dataclass(kw_only=True)
class OptimiserSection:
    """A nested section for the tests."""

    lr: float = 1e-4
    """Learning rate."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """Adam's betas."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")


@dataclass(kw_only=True)
class ExampleConfig:
    """A top-level config for the tests."""

    name: str = "run"
    """Run name."""
    epochs: int = 200
    """Epochs."""
    variant: Literal["text", "audio", "bimodal"] = "bimodal"
    """Which modalities."""
    resume: bool = False
    """Resume."""
    address: str | None = None
    """Optional address."""
    optimiser: OptimiserSection = field(default_factory=OptimiserSection)
    """The optimiser."""


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('name = "from-file"\nepochs = 5\n[optimiser]\nlr = 0.01\n', encoding="utf-8")
    config = load_config(ExampleConfig, path, ["epochs=7", "optimiser.betas=[0.8, 0.9]", "variant=text"])
    assert config.name == "from-file"
    assert config.epochs == 7
    assert config.optimiser.lr == 0.01
    assert config.optimiser.betas == [0.8, 0.9]
    assert config.variant == "text"
    assert config.address is None


def test_override_values_are_typed():
    assert parse_override("a.b=1e-4") == (["a", "b"], 1e-4)
    assert parse_override("flag=true") == (["flag"], True)
    assert parse_override("path=/data/MELD.Raw") == (["path"], "/data/MELD.Raw")
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["epoch=3"], "unknown config key 'epoch'. Did you mean 'epochs'"),
        (["optimiser.learning_rate=3"], "unknown config key 'optimiser.learning_rate'"),
        (["epochs=three"], "'epochs' must be an integer"),
        (["epochs=1.5"], "'epochs' must be an integer"),
        (["variant=bimodl"], "must be one of 'text' | 'audio' | 'bimodal', not 'bimodl'. Did you mean 'bimodal'"),
        (["resume=1"], "'resume' must be true or false"),
        (["optimiser.lr=-1"], "[optimiser] lr must be positive"),
        (["optimiser=3"], "'optimiser' is a section"),
        (["epochs"], "not of the form key=value"),
        (["name.sub=1"], "'name' is a value, not a section"),
    ],
)
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(ExampleConfig, None, overrides)
    assert message in str(error.value)


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[optimiser]\nlrr = 1.0\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'optimiser.lrr'. Did you mean 'optimiser.lr'"):
        load_config(ExampleConfig, path)


def test_invalid_toml_and_missing_file(tmp_path):
    bad = tmp_path / "broken.toml"
    bad.write_text("name = \n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(ExampleConfig, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(ExampleConfig, tmp_path / "absent.toml")


def test_resolved_config_round_trip(tmp_path):
    config = load_config(ExampleConfig, None, ["address=10.0.0.1:6379", "optimiser.lr=0.5", "resume=true"])
    path = write_resolved_config(config, tmp_path / "run")
    assert path.name == "config.toml"
    assert tomllib.loads(path.read_text())["optimiser"]["lr"] == 0.5
    assert load_config(ExampleConfig, path) == config
    # None is not written (TOML has no null) and comes back as the default None.
    default = ExampleConfig()
    assert load_config(ExampleConfig, write_resolved_config(default, tmp_path / "default")) == default


def test_demo_corpus_config_round_trip(tmp_path):
    config = DemoCorpusConfig(seed=4, clip_format="wav", ambiguous_share=0.5)
    assert from_dict(DemoCorpusConfig, tomllib.loads(to_toml(config))) == config


def test_overrides_do_not_mutate_input():
    data = {"optimiser": {"lr": 0.1}}
    merged = apply_overrides(ExampleConfig, data, ["optimiser.lr=0.2"])
    assert data == {"optimiser": {"lr": 0.1}} and merged["optimiser"]["lr"] == 0.2


def test_describe_lists_leaf_keys_with_docs():
    rows = {key: (default, doc) for key, default, doc in describe(ExampleConfig)}
    assert rows["optimiser.lr"] == ("0.0001", "Learning rate.")
    assert rows["variant"][1] == "Which modalities."
    assert "optimiser" not in rows
