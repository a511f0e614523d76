"""`cmroberta report RUN...`: tables shaped like the paper's Tables 1 and 2 from finished runs."""

import argparse
from pathlib import Path


def run_report(run_dirs: list[Path], out: Path | None) -> None:
    """Print the tables (ending with where the figures are); with `out`, first write report.md and the CSVs there.

    The first line says which preset trained the runs, where `cmroberta reproduce` recorded one."""
    # deferred: the report reads model.evaluate, which imports torch, and `cmroberta --help` imports every verb.
    from launch.aggregate import SPREAD_PNG
    from launch.report import format_report, read_preset, write_report
    from launch.run_results import read_run_results

    runs = read_run_results(run_dirs)
    preset = read_preset(run_dirs)
    # A sweep folder given here has its seed-spread plot (`cmroberta sweep` draws it).
    spread_plots = [path / SPREAD_PNG for path in run_dirs if (path / SPREAD_PNG).is_file()]
    spread_plot = spread_plots[0] if len(spread_plots) == 1 else None
    if out is not None:
        for path in write_report(runs, out, spread_plot, preset):
            print(f"wrote {path}")
    print(format_report(runs, spread_plot=spread_plot, preset=preset))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tables shaped like the paper's Tables 1, 2 and 3 from finished runs",
        description=(
            "Read finished run folders (or folders holding them, such as a sweep) and print the paper's Table 1 "
            "(weighted F1 of audio, text, bimodal and bimodal - text, with and without the SCA unit), Table 2 "
            "(per-class F1 per modality, bimodal - text, the always-majority floor) and, where a store holds "
            "openSMILE and OpenL3, Table 3 (the audio model by its features), with the paper's numbers beside them. "
            "Runs are grouped by their config without the seed; each group is shown as mean ± sample sd with the "
            "95% confidence interval of the mean below (clipped to [0, 100]), and rows name the keys that set them "
            "apart. Where the corpus lists voice-only utterances (the demo corpus's ambiguous.json), a table scores "
            "them. Paired differences (bimodal - text, SCA - no SCA, end-to-end - frozen between runs that differ "
            "in the text mode alone) get a paired t-test across seeds, a paired bootstrap over test dialogues and "
            "a bootstrap over both, with Holm-corrected p-values. "
            "Runs scored "
            "under perturbations (`cmroberta evaluate RUN --perturb SPEC`) add a robustness table: weighted F1 per "
            "condition against clean."
        ),
    )
    parser.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN", help="run folders, or folders holding them")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md and the tables as CSV")
    parser.set_defaults(handler=lambda args: run_report(args.run_dirs, args.out))
