"""A run is bound to its store by identity, not by path; a folder of one kind is never written over by another verb.

One real run is trained (frozen features, a tiny head) through `cmroberta train` on a store whose
path holds spaces, a non-ASCII letter and an emoji, the path that the JSON-quoted override used to
mangle. The cases then swap the store for another of the same config, move the whole tree, and point
commands that write one kind of folder at a folder of another kind.
"""

import json
import shutil

import pytest

from extract.manifest import MANIFEST_NAME
from launch.cli import main
from model.run_folder import RunFolder
from tests.faults.fault_summary import record_case
from tests.learnable_store import write_learnable_store
from tests.tiny_runs import TINY_HEAD

# Spaces, a letter outside ASCII and a character outside the Basic Multilingual Plane.
ODD_NAME = "features é 😀"


def command(argv, capsys) -> tuple[int, str]:
    """Run `cmroberta ARGV`; its status and its stderr, which must hold no traceback."""
    status = main([str(word) for word in argv])
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return status, err


def error_lines(err: str) -> list[str]:
    """The lines a refusal printed, without the log lines (timestamped) that came before it."""
    return [line for line in err.splitlines() if line.startswith("cmroberta ")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(tree, store, run): a run trained through the CLI on a store at an odd path, both inside `tree`."""
    tree = tmp_path_factory.mktemp("tree")
    store = write_learnable_store(tree / ODD_NAME / "learnable-000000000000")
    run_dir = tree / "runs" / "text-seed0"
    status = main(["train", str(store), *TINY_HEAD, "--run-dir", str(run_dir)])
    assert status == 0
    return tree, store, run_dir


@pytest.fixture
def copy(trained, tmp_path):
    """A copy of the trained tree to damage, as if trained where it now is: (store, run).

    The run's config and store record name the store by absolute path; they are pointed at the copy,
    so that the original tree, shared by the module, is never what a case finds.
    """
    tree, store, run_dir = trained
    shutil.copytree(tree, tmp_path / "tree", ignore=shutil.ignore_patterns(".lock"))
    copied_run = tmp_path / "tree" / run_dir.relative_to(tree)
    for name in ("config.toml", RunFolder(run_dir).store_record_path.name):
        path = copied_run / name
        path.write_text(path.read_text(encoding="utf-8").replace(str(tree), str(tmp_path / "tree")), encoding="utf-8")
    return tmp_path / "tree" / store.relative_to(tree), copied_run


@pytest.mark.integration
def test_a_path_with_an_emoji_trains_and_the_run_records_its_store(trained):
    """Before: `store=` was quoted by json.dumps into surrogate escapes, and train said the store did not exist."""
    _, store, run_dir = trained
    record = json.loads(RunFolder(run_dir).store_record_path.read_text(encoding="utf-8"))
    record_case("train on a store path with an emoji", traceback=False, silent=False)
    assert record["path"] == str(store.resolve())
    assert record["relative"] == f"../../{ODD_NAME}/learnable-000000000000"
    assert len(record["identity"].split("-")) == 2


def replace_store_with_another(store) -> None:
    """Another store of the same config at the same path: other rows, so another plan."""
    shutil.rmtree(store)
    write_learnable_store(store, test_dialogues=10)


@pytest.mark.integration
def test_evaluate_refuses_a_store_that_is_not_the_runs_naming_both(copy, capsys):
    """Before: evaluate scored the other store's test split and overwrote test_metrics.json without a word."""
    store, run_dir = copy
    before = (run_dir / "test_metrics.json").read_bytes()
    replace_store_with_another(store)
    status, err = command(["evaluate", run_dir], capsys)
    record = json.loads(RunFolder(run_dir).store_record_path.read_text(encoding="utf-8"))
    after = (run_dir / "test_metrics.json").read_bytes()
    record_case("evaluate on a swapped store", traceback="Traceback" in err, silent=status == 0 or after != before)
    assert status == 2
    [line] = error_lines(err)
    assert f"was trained on store {record['identity']}" in line and "another corpus or plan" in line
    assert after == before


@pytest.mark.integration
def test_verify_names_a_swapped_store(copy, capsys):
    """Before: `verify RUN` said all was well with another store at the run's path."""
    store, run_dir = copy
    replace_store_with_another(store)
    status = main(["verify", str(run_dir)])
    out = capsys.readouterr().out
    record_case("verify a run whose store was swapped", traceback="Traceback" in out, silent=status == 0)
    assert status == 1
    assert "another corpus or plan" in out


@pytest.mark.integration
def test_resume_refuses_a_swapped_store(copy, capsys):
    store, run_dir = copy
    replace_store_with_another(store)
    status, err = command(["train", store, *TINY_HEAD, "--run-dir", run_dir, "--resume"], capsys)
    record_case("train --resume on a swapped store", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    [line] = error_lines(err)
    assert "another corpus or plan" in line


@pytest.mark.integration
def test_a_moved_tree_finds_its_store_relative_to_the_run(copy, tmp_path, capsys):
    """The run's config and record name the old absolute path; once the tree is moved, the relative record finds it."""
    _, run_dir = copy
    moved = tmp_path / "moved"
    (tmp_path / "tree").rename(moved)
    status, err = command(["evaluate", moved / run_dir.relative_to(tmp_path / "tree")], capsys)
    record_case("evaluate a run in a moved tree", traceback="Traceback" in err, silent=False)
    assert status == 0, err


@pytest.mark.integration
def test_train_refuses_a_store_as_its_run_folder(trained, tmp_path, capsys):
    """Before: `train STORE --run-dir STORE` replaced the store's config.toml with a run config."""
    _, store, _ = trained
    target = tmp_path / "store"
    shutil.copytree(store, target)
    before = (target / "config.toml").read_bytes()
    status, err = command(["train", target, *TINY_HEAD, "--run-dir", target], capsys)
    changed = (target / "config.toml").read_bytes() != before
    record_case("train --run-dir STORE", traceback="Traceback" in err, silent=changed)
    assert status == 2
    assert error_lines(err) == [
        f"cmroberta train: error: --run-dir {target} holds a feature store, and this command writes a run folder "
        "there, which would overwrite it; choose another folder"
    ]
    assert not changed


@pytest.mark.integration
def test_extract_refuses_a_run_folder_as_its_store_root(trained, tmp_path, capsys):
    _, _, run_dir = trained
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train_sent_emo.csv").write_text("Sr No.,Utterance\n")
    status, err = command(["extract", corpus, f"store_root={json.dumps(str(run_dir))}"], capsys)
    record_case("extract store_root=RUN", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    [line] = error_lines(err)
    assert f"store_root {run_dir} holds a run folder" in line


def test_demo_corpus_refuses_an_existing_corpus(tmp_path, capsys):
    """Before: it replaced the user's *_sent_emo.csv and same-named clips, and left the old clips mixed in."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    mine = corpus / "train_sent_emo.csv"
    mine.write_text("my own transcripts\n")
    status, err = command(["demo-corpus", "--out", corpus, "train_dialogues=1"], capsys)
    lost = mine.read_text() != "my own transcripts\n"
    record_case("demo-corpus --out CORPUS", traceback="Traceback" in err, silent=lost)
    assert status == 2
    assert error_lines(err) == [f"cmroberta demo-corpus: error: --out {corpus} is not empty; write the demo corpus "
                                "into a new or empty folder"]
    assert mine.read_text() == "my own transcripts\n"


def test_verify_calls_a_corpus_a_corpus(tmp_path, capsys):
    """Before: a demo corpus (it holds a config.toml) was called a damaged run folder."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train_sent_emo.csv").write_text("Sr No.,Utterance\n")
    (corpus / "config.toml").write_text("seed = 0\n")
    status, err = command(["verify", corpus], capsys)
    record_case("verify a corpus", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert error_lines(err) == [f"cmroberta verify: error: {corpus} is a corpus, not a store, run or sweep folder; "
                                f"check it with `cmroberta prepare {corpus}`"]


@pytest.mark.integration
def test_a_config_file_that_is_not_utf8_is_one_line(trained, tmp_path, capsys):
    _, store, _ = trained
    config = tmp_path / "run.toml"
    config.write_bytes("seed = 1 # café\n".encode("latin-1"))
    status, err = command(["train", store, "--config", config, "--run-dir", tmp_path / "run"], capsys)
    record_case("a --config in latin-1", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert error_lines(err) == [f"cmroberta train: error: config file {config} is not UTF-8 text (byte 14 cannot be "
                                "decoded); save it as UTF-8"]
    assert (store / MANIFEST_NAME).is_file()


def test_extract_reads_a_corpus_path_with_an_emoji(tmp_path, capsys):
    """Before: the JSON-quoted `corpus=` override came back as another string, and extract said it did not exist.

    The folder exists and holds no CSV, so extraction gets as far as reading the corpus and says so.
    """
    corpus = tmp_path / ODD_NAME
    corpus.mkdir()
    status, err = command(["extract", corpus, f"store_root={json.dumps(str(tmp_path / 'features'))}",
                           'families=["opensmile"]'], capsys)
    [line] = error_lines(err)
    record_case("extract a corpus path with an emoji", traceback="Traceback" in err, silent=status == 0)
    assert status == 2
    assert "does not exist" not in line
    assert str(corpus) in line
