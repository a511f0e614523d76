"""`cmroberta report RUN...`: tables shaped like the paper's Tables 1 and 2 from finished runs."""

import argparse
from pathlib import Path


def run_report(run_dirs: list[Path], out: Path | None) -> None:
    """Print the tables; with `out`, also write report.md and one CSV per table there."""
    # Imported here: the report reads model.evaluate, which imports torch, and `cmroberta --help` imports every verb.
    from launch.report import format_report, load_runs, write_report
    from launch.robustness_report import robustness_section, write_robustness

    runs = load_runs(run_dirs)
    print(format_report(runs) + robustness_section(run_dirs))
    if out is not None:
        for path in [*write_report(runs, out), *write_robustness(run_dirs, out)]:
            print(f"wrote {path}")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tables shaped like the paper's Tables 1 and 2 from finished runs",
        description=(
            "Read finished run folders (or folders holding them, such as a sweep) and print the paper's Table 1 "
            "(weighted F1 of audio, text, bimodal and bimodal - text, with and without the SCA unit) and Table 2 "
            "(per-class F1 per modality, bimodal - text, the always-majority floor), with the paper's numbers "
            "beside them. Seeds of one variant are shown as mean ± std. Where the corpus lists voice-only "
            "utterances (the demo corpus's ambiguous.json), a third table scores them. Runs scored under perturbations "
            "(`cmroberta evaluate RUN --perturb SPEC`) add a robustness table: weighted F1 per condition against clean."
        ),
    )
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN", help="run folders, or folders holding them")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and the tables as CSV")
    parser.set_defaults(handler=lambda args: run_report(args.run_dirs, args.out))
