"""`cmroberta config SECTION`: every key of a config with its default and meaning."""

import argparse
import importlib

from cluster.config import describe
from launch.cli import UserError
from launch.tables import format_table

# The configs a user writes, by the name `cmroberta config` knows them.
CONFIGS: dict[str, str] = {
    "demo-corpus": "extract.demo_corpus:DemoCorpusConfig",
    "iemocap": "extract.iemocap:IemocapConfig",
    "extract": "extract.extract_config:ExtractConfig",
    "train": "model.run_config:RunConfig",
    "profile": "cluster.profile:ClusterProfile",
}


def run_config(section: str) -> None:
    """Print the keys of the config called `section`."""
    if section not in CONFIGS:
        raise UserError(f"no config called {section!r}; choose one of: {', '.join(CONFIGS)}")
    module, name = CONFIGS[section].split(":")
    rows = describe(getattr(importlib.import_module(module), name))
    print(format_table(["key", "default", "meaning"], rows))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config",
        help="list the keys of a config, with defaults and meanings",
        description="Print every key of a config: what to write in its TOML file or as key=value on the command line.",
    )
    parser.add_argument("section", choices=sorted(CONFIGS), help="which config")
    parser.set_defaults(handler=lambda args: run_config(args.section))
