"""The paper's whole experiment as one plan of stages: what `cmroberta reproduce` submits, and prints with --dry-run.

Stages, each after the ones it depends on:

1. check: the corpus read as `cmroberta prepare` reads it (in this process);
2. extract: openSMILE, OpenL3 and text (RoBERTa-Large unless `text.model` says otherwise) into one
   feature store, one Submitit job (on SLURM a Ray cluster across the job's nodes);
3. sweep: Table 1's variants in the `frozen` and `end_to_end` text modes, and the audio model once (it
   reads no text) with openSMILE and OpenL3, openSMILE only and OpenL3 only (Table 3), every seed;
4. finetune encoders: the `finetuned` text runs, one per seed. Each fine-tunes its encoder and adds the
   encoder's vectors to the store, which one writer at a time may do, so they run one after another;
5. finetuned heads: the `finetuned` bimodal runs, which reuse those encoders and vectors;
6. robustness (optional): the bimodal runs of every text mode scored under perturbations;
7. report: the sweep's aggregate and Tables 1, 2 and 3 with the paired differences (in this process).

Every run lives in one sweep folder, named by the hash of its config, so a second `reproduce` finds
what is finished (`launch.sweep`) and the store is reused when it is complete.

Presets (`PRESETS`): `paper` is the paper's section 4.3 as written; `recommended` differs where the
project has a reason, each given in `Preset.reasons`. Both train every text mode with the same head,
budget and patience, so end-to-end − frozen compares the text mode alone. Keys after the preset
(`ReproduceConfig.train_overrides`) change every run.
"""

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cluster.config import load_config
from cluster.profile import ClusterProfile
from extract.extract_config import ExtractConfig, store_path
from launch.sweep import PlannedRun, plan_sweep
from model.run_config import RunConfig

TextModeName = Literal["end_to_end", "finetuned", "frozen"]
TEXT_MODES: tuple[str, ...] = ("end_to_end", "finetuned", "frozen")
# Table 1's variants that read text; the audio variant runs once, for every mode.
TEXT_VARIANTS: tuple[str, ...] = ("text", "bimodal_no_sca", "bimodal")
# Table 3's audio configurations: both families (also Table 1's audio model), openSMILE only, OpenL3 only.
AUDIO_FAMILY_SETS: tuple[tuple[str, ...], ...] = (("opensmile", "openl3"), ("opensmile",), ("openl3",))


@dataclass(frozen=True, kw_only=True)
class Preset:
    """Named training settings applied to every run, before the user's own keys."""

    name: str
    """What `--preset` takes."""
    summary: str
    """One line on what it is."""
    settings: dict[str, Any]
    """Run config key -> value."""
    reasons: dict[str, str] = field(default_factory=dict)
    """Key -> why it differs from the paper (empty for the paper's own preset)."""

    def overrides(self) -> list[str]:
        """The settings as `key=value` overrides."""
        return [f"{key}={_override_value(value)}" for key, value in self.settings.items()]

    def describe(self) -> str:
        """One line for a report: the name, the settings, and each difference from the paper with its reason."""
        settings = ", ".join(f"{key}={value}" for key, value in self.settings.items())
        reasons = "".join(f"; {key} differs from the paper: {reason}" for key, reason in self.reasons.items())
        return f"preset `{self.name}` ({self.summary}): {settings}{reasons}"


PAPER_SETTINGS: dict[str, Any] = {
    "train.batch_dialogues": 32,
    "model.hidden_size": 128,
    "train.learning_rate": 1e-4,
    "train.weight_decay": 3e-4,
    "train.max_epochs": 200,
    "train.patience": 15,
}
PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        summary="the paper's section 4.3 as written: batch 32, hidden 128, Adam 1e-4, L2 3e-4, 200 epochs, patience 15",
        settings=PAPER_SETTINGS,
    ),
    "recommended": Preset(
        name="recommended",
        summary="the paper's settings, except where the project has a reason to differ",
        settings={**PAPER_SETTINGS, "train.max_epochs": 40},
        reasons={
            "train.max_epochs": (
                "40, twice the end-to-end encoder's decay horizon (end_to_end.schedule.decay_epochs = 20), after "
                "which its rate is 0 and only the head moves; every text mode gets the same budget so that "
                "end-to-end − frozen compares like with like, and a 200-epoch budget would make each SLURM job "
                "ask for five times the time limit, with patience 15 deciding the stop in both"
            ),
        },
    ),
}


@dataclass(kw_only=True)
class ReproduceConfig:
    """What `cmroberta reproduce` runs."""

    corpus: str
    """Corpus folder in MELD's layout (MELD.Raw, or a corpus made by `cmroberta demo-corpus`)."""
    out: str = "reproduce"
    """Folder for everything: features/, sweep/ (one run folder per config and seed), report/, logs/."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Seeds of every configuration."""
    preset: Literal["paper", "recommended"] = "recommended"
    """Training settings of every run (`PRESETS`)."""
    text_modes: list[TextModeName] = field(default_factory=lambda: list(TEXT_MODES))
    """Text modes of Table 1's text-reading variants."""
    robustness: list[str] = field(default_factory=list)
    """Perturbation specs to score the bimodal runs under (e.g. 'audio_missing', 'text_asr:wer=0.3'); empty: none."""
    extract_overrides: list[str] = field(default_factory=list)
    """ExtractConfig `key=value` overrides (e.g. 'openl3.weights=/models/openl3', 'text.model=/models/roberta')."""
    train_overrides: list[str] = field(default_factory=list)
    """RunConfig `key=value` overrides applied after the preset, to every run."""

    def __post_init__(self) -> None:
        if not self.corpus.strip():
            raise ValueError("corpus must be the corpus folder in MELD's layout, e.g. ~/data/MELD.Raw")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct numbers of 0 or more, not {self.seeds}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, not {self.preset!r}")
        if not self.text_modes or len(set(self.text_modes)) != len(self.text_modes):
            raise ValueError(
                f"text_modes must name each of {', '.join(TEXT_MODES)} at most once, not {self.text_modes}"
            )
        for mode in self.text_modes:
            if mode not in TEXT_MODES:
                raise ValueError(f"text_modes: unknown mode {mode!r}; choose from {', '.join(TEXT_MODES)}")


@dataclass(frozen=True, kw_only=True)
class Stage:
    """One stage of the plan."""

    name: str
    """Its name in the plan and in messages."""
    after: tuple[str, ...]
    """Stages that must succeed first."""
    what: str
    """What it does, in a few words."""
    runs: list[PlannedRun] = field(default_factory=list)
    """Training runs it submits (sweep stages)."""
    serial: bool = False
    """Run its runs one after another (array_parallelism 1)."""
    command: str = ""
    """The equivalent command line."""


@dataclass(frozen=True, kw_only=True)
class ReproducePlan:
    """Every stage, and where everything goes."""

    config: ReproduceConfig
    """What was asked for."""
    preset: Preset
    """Its preset."""
    extract: ExtractConfig
    """The extraction's config."""
    store: Path
    """The feature store the extraction writes (and the runs read)."""
    sweep_dir: Path
    """The sweep folder of every run."""
    report_dir: Path
    """Where the report goes."""
    logs_dir: Path
    """Submitit's logs of the extraction and robustness jobs (the sweep keeps its own under sweep/logs)."""
    stages: list[Stage]
    """In the order they are submitted."""

    def stage(self, name: str) -> Stage:
        """The stage called `name`."""
        return next(stage for stage in self.stages if stage.name == name)

    def robustness_runs(self) -> list[Path]:
        """The run folders the robustness stage scores: the bimodal runs of every text mode."""
        return [
            run.run_dir
            for stage in self.stages
            for run in stage.runs
            if run.config.model.variant == "bimodal" and run.config.model.modality_dropout == 0
        ]


def _seeds_text(seeds: Sequence[int]) -> str:
    return ",".join(map(str, sorted(seeds)))


def _override_value(value: Any) -> str:
    """A value as an override or grid word reads it: a bare word for a string, TOML (JSON) for the rest."""
    return value if isinstance(value, str) else json.dumps(value)


def _sweep_command(seeds: Sequence[int], grid: dict[str, list[Any]], base: Sequence[str], cluster: str) -> str:
    """The `cmroberta sweep` command line that plans the same runs, quoted for a POSIX shell."""
    words = ["cmroberta", "sweep", "--seeds", _seeds_text(seeds)]
    for key, values in grid.items():
        words += ["--grid", f"{key}={','.join(_override_value(value) for value in values)}"]
    return shlex.join([*words, *base]) + f" {cluster}"


def plan_reproduction(config: ReproduceConfig, cluster_arguments: str = "--cluster local") -> ReproducePlan:
    """The plan of `config`: every stage and every run, validated, with nothing submitted."""
    # Absolute: the runs' configs name the store, and their jobs may start in another folder.
    out = Path(config.out).expanduser().resolve()
    preset = PRESETS[config.preset]
    extract_config = load_config(
        ExtractConfig,
        None,
        [
            f"store_root={json.dumps(str(out / 'features'))}",
            *config.extract_overrides,
            f"corpus={json.dumps(str(config.corpus))}",
        ],
    )
    store = store_path(extract_config)
    sweep_dir = out / "sweep"
    base = [f"store={store}", *preset.overrides(), *config.train_overrides]

    def planned(grid: dict[str, list[Any]]) -> list[PlannedRun]:
        return plan_sweep(RunConfig, sweep_dir, config.seeds, grid, overrides=base)

    head_modes = [mode for mode in ("frozen", "end_to_end") if mode in config.text_modes]
    grids: list[dict[str, list[Any]]] = [
        {"text_mode": [mode], "model.variant": list(TEXT_VARIANTS)} for mode in head_modes
    ]
    grids.append({"model.variant": ["audio"], "data.audio_families": [list(f) for f in AUDIO_FAMILY_SETS]})
    stages = [
        Stage(
            name="check",
            after=(),
            what="read the corpus as `cmroberta prepare` does; stop on what would invalidate the run",
            command=shlex.join(["cmroberta", "prepare", config.corpus]),
        ),
        Stage(
            name="extract",
            after=("check",),
            what=f"{', '.join(extract_config.families)} features into {store}",
            command=shlex.join(
                ["cmroberta", "launch", "extract", config.corpus, f"store_root={out / 'features'}"]
                + config.extract_overrides
            )
            + f" {cluster_arguments} --wait",
        ),
        Stage(
            name="sweep",
            after=("extract",),
            what="Table 1 in the frozen and end-to-end modes, and the audio model (Tables 1 and 3)",
            runs=[run for grid in grids for run in planned(grid)],
            command="\n".join(_sweep_command(config.seeds, grid, base, cluster_arguments) for grid in grids),
        ),
    ]
    if "finetuned" in config.text_modes:
        finetuned = (
            (
                "finetune encoders",
                ("extract",),
                "the fine-tuned text runs: each seed's encoder fine-tuned, exported and extracted into the store",
                {"text_mode": ["finetuned"], "model.variant": ["text"]},
                True,
            ),
            (
                "finetuned heads",
                ("finetune encoders",),
                "the fine-tuned bimodal runs, on those encoders' vectors",
                {"text_mode": ["finetuned"], "model.variant": ["bimodal_no_sca", "bimodal"]},
                False,
            ),
        )
        for name, after, what, grid, serial in finetuned:
            where = cluster_arguments + (" --profile-set array_parallelism=1" if serial else "")
            stages.append(
                Stage(
                    name=name,
                    after=after,
                    what=what,
                    runs=planned(grid),
                    serial=serial,
                    command=_sweep_command(config.seeds, grid, base, where),
                )
            )
    head_stages = tuple(stage.name for stage in stages if stage.runs)
    if config.robustness:
        stages.append(
            Stage(
                name="robustness",
                after=head_stages,
                what=f"the bimodal runs scored under {', '.join(config.robustness)}",
                command=" ; ".join(f"cmroberta evaluate RUN --perturb {spec}" for spec in config.robustness)
                + " (each bimodal RUN)",
            )
        )
    stages.append(
        Stage(
            name="report",
            after=tuple(stage.name for stage in stages[1:]),
            what="the sweep's aggregate, Tables 1, 2 and 3, the paired differences",
            command=shlex.join(["cmroberta", "report", str(sweep_dir), "--out", str(out / "report")]),
        )
    )
    return ReproducePlan(
        config=config,
        preset=preset,
        extract=extract_config,
        store=store,
        sweep_dir=sweep_dir,
        report_dir=out / "report",
        logs_dir=out / "logs",
        stages=stages,
    )


def job_resources(profile: ClusterProfile, in_batch_script: bool = False) -> str:
    """What each job of the profile asks for, in a few words."""
    if profile.kind == "local":
        return f"a process on this machine, up to {profile.time} min"
    memory = (
        f", {profile.mem:g} GB a node"
        if profile.mem is not None
        else f", {profile.mem_per_gpu:g} GB a GPU"
        if profile.mem_per_gpu is not None
        else ""
    )
    tasks = "1 task (starts its own processes)" if in_batch_script else f"{profile.tasks} task(s) a node"
    return (
        f"{profile.nodes} node(s), {tasks}, {profile.cpus_per_task} CPU(s) a task, {profile.gpus_per_node} GPU(s) "
        f"a node{memory}, {profile.time} min, partition {profile.partition or 'default'}"
    )
