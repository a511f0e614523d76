"""How far one `cmroberta` command's work travels through the project: functions, files, folder crossings.

It runs a CLI verb in this process under a profiler hook that sees every call of a project function
(cluster/, extract/, model/, launch/), and prints:
- how many distinct project functions ran and in how many files;
- how many distinct caller → callee edges cross from one of the four folders into another, and
  how many of those point back up the stack of folders (cluster → extract → model → launch), which
  the layout forbids.
The layout refactor is measured by running it before and after on the same run and input, e.g.:

    python bench/call_path.py predict RUN_DIR CORPUS --split test --out /tmp/predictions.jsonl
"""

import collections
import sys
import threading
from pathlib import Path

FOLDERS = ("cluster", "extract", "model", "launch")
ROOT = Path(__file__).resolve().parent.parent


def project_folder(filename: str) -> str | None:
    """The project folder a code object's file lives in, or None for the standard library and packages."""
    try:
        relative = Path(filename).resolve().relative_to(ROOT)
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) > 1 and relative.parts[0] in FOLDERS else None


def _name(function: tuple[str, str]) -> str:
    filename, qualname = function
    return f"{Path(filename).resolve().relative_to(ROOT)}:{qualname}"


def main() -> int:
    # Imported here so that the hook below sees the CLI's own imports and calls.
    from launch.cli import main as cli_main

    functions: set[tuple[str, str]] = set()
    edges: set[tuple[tuple[str, str], tuple[str, str]]] = set()
    calls = collections.Counter()

    def hook(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        folder = project_folder(code.co_filename)
        if folder is None:
            return
        callee = (code.co_filename, code.co_qualname)
        functions.add(callee)
        calls[callee] += 1
        caller = frame.f_back
        while caller is not None and project_folder(caller.f_code.co_filename) is None:
            caller = caller.f_back
        if caller is not None:
            edges.add(((caller.f_code.co_filename, caller.f_code.co_qualname), callee))

    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        status = cli_main(sys.argv[1:])
    finally:
        sys.setprofile(None)
        threading.setprofile(None)

    order = {name: i for i, name in enumerate(FOLDERS)}
    crossing = [(a, b) for a, b in edges if project_folder(a[0]) != project_folder(b[0])]
    upward = [(a, b) for a, b in crossing if order[project_folder(b[0])] > order[project_folder(a[0])]]
    files = {filename for filename, _ in functions}
    print(f"command exit status: {status}")
    print(f"project functions run: {len(functions)} in {len(files)} files")
    print(f"caller -> callee edges: {len(edges)}; crossing folders: {len(crossing)}; up the layout: {len(upward)}")
    by_pair = collections.Counter((project_folder(a[0]), project_folder(b[0])) for a, b in crossing)
    for (source, target), count in sorted(by_pair.items()):
        print(f"  {source} -> {target}: {count}")
    # A call up the layout is a callback the lower folder was handed (a writer, a job body), not an import.
    for caller, callee in sorted(upward):
        print(f"  up: {_name(caller)} -> {_name(callee)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
