"""Hypothesis-driven bad input to ``sparsecore train`` (``main()`` with argv lists, in this process).

Every bad value of a flag, every malformed ``--option``, every unknown flag or name ends the same way: exit
status 2 (``main`` returns it, or argparse raises ``SystemExit(2)``), one stderr line ``... error: ...`` that
names the problem (after argparse's usage lines, for values argparse itself refuses), no traceback, and no run
folder.
"""

from __future__ import annotations

import inspect
import re
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import sparsecore
from sparsecore import cli
from sparsecore.data import list_datasets
from sparsecore.models import list_models
from sparsecore.plugins import registry

#: A tiny valid run; the flags under test come after it and override it (argparse keeps the last value).
BASE = ["train", "--algorithm", "set", "--dataset", "random", "--limit-train", "40", "--limit-test", "20",
        "--batch-size", "20", "--epochs", "1", "--threads", "1", "--no-plots", "--quiet"]
EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# text that argv may carry (no lone surrogates: an operating system's argv cannot hold them)
argv_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def not_a_number() -> st.SearchStrategy[str]:
    return argv_text.filter(lambda t: _number(t) is None)


def non_finite() -> st.SearchStrategy[str]:
    return st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999"])


def floats_text(**bounds) -> st.SearchStrategy[str]:
    return st.floats(allow_nan=False, allow_infinity=False, **bounds).map(repr)


def bad_value(flag: str) -> st.SearchStrategy[tuple[list[str], str]]:
    """``(argv, what the error line names)`` for a bad value of ``flag``."""
    numbers = {
        "--lr": floats_text(max_value=0.0),
        "--density": st.one_of(floats_text(max_value=0.0), floats_text(min_value=1.0, exclude_min=True)),
        "--momentum": st.one_of(floats_text(max_value=0.0, exclude_max=True), floats_text(min_value=1.0)),
        "--weight-decay": floats_text(max_value=0.0, exclude_max=True),
    }
    if flag in numbers:
        values = st.one_of(not_a_number(), non_finite(), numbers[flag])
    else:  # --epochs, --batch-size: positive integers
        values = st.one_of(argv_text.filter(lambda t: _integer(t) is None), st.integers(max_value=0).map(str))
    return values.map(lambda value: ([f"{flag}={value}"], flag))


def bad_run_name() -> st.SearchStrategy[tuple[list[str], str]]:
    separated = st.tuples(argv_text, st.sampled_from("/\\\0"), argv_text).map("".join)
    too_long = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\0"),
                       min_size=256, max_size=300)
    return st.one_of(
        st.one_of(separated, st.sampled_from([".", ".."])).map(lambda name: ([f"--run-name={name}"], "--run-name")),
        too_long.map(lambda name: ([f"--run-name={name}"], "File name too long")))


def bad_option() -> st.SearchStrategy[tuple[list[str], str]]:
    no_equals = argv_text.filter(lambda t: "=" not in t).map(lambda t: ([f"--option={t}"], "--option expects key=value"))
    empty_key = st.tuples(st.sampled_from(["", " ", "  "]), argv_text).map(
        lambda kv: ([f"--option={kv[0]}={kv[1]}"], "--option expects key=value"))
    accepted = {"prune_rate", "decay", "eta_min", "update_every", "update_end"}
    unknown_key = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="="), min_size=1,
                          max_size=12).filter(lambda k: k.strip() and k.strip().replace("-", "_") not in accepted)
    unknown = unknown_key.map(lambda k: ([f"--option={k}=1"], "does not accept option(s)"))
    twice = st.sampled_from(sorted(accepted)).map(lambda k: ([f"--option={k}=1", f"--option={k}=2"], "given twice"))
    bad_json = st.sampled_from(["[", "{", '"a', "[1,", '{"a":}']).map(
        lambda v: ([f"--option=prune_rate={v}"], "looks like JSON but does not parse"))
    return st.one_of(no_equals, empty_key, unknown, twice, bad_json)


def _known(name: str, names) -> bool:
    return name.strip().casefold() in {n.casefold() for n in names}


def unknown_name(flag: str) -> st.SearchStrategy[tuple[list[str], str]]:
    if flag == "--algorithm":
        def unknown(name: str) -> bool:
            try:
                registry.algorithm(name)
            except sparsecore.ConfigurationError:
                return True
            return False
    elif flag == "--model":
        def unknown(name: str) -> bool:
            return not _known(name, list_models())
    else:
        def unknown(name: str) -> bool:
            return not _known(name, [*list_datasets(), "random"])
    return argv_text.filter(unknown).map(lambda name: ([f"{flag}={name}"], repr(name)))


def _train_help(parser) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        parser.parse_args(["train", "--help"])
    return out.getvalue()


def unknown_flag() -> st.SearchStrategy[tuple[list[str], str]]:
    parser = cli.build_parser()
    known = set(re.findall(r"--[A-Za-z][\w-]*", parser.format_help()))
    known |= set(re.findall(r"--[A-Za-z][\w-]*", _train_help(parser)))
    words = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, blacklist_characters="="), min_size=1,
                    max_size=12)
    # argparse takes an unambiguous prefix of a flag for the flag: such words are not unknown
    return words.map(lambda w: "--" + w).filter(lambda f: not any(k.startswith(f) for k in known)).map(
        lambda f: ([f], f"unrecognized arguments: {f}"))


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    """``sparsecore.cli.main(argv)``: exit status (argparse's ``SystemExit`` too) and stderr."""
    capsys.readouterr()
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.err


def assert_refused(argv: list[str], names: str, capsys, runs: Path) -> None:
    """Exit 2, one error line naming ``names`` (argparse's usage lines before it), nothing in ``runs``."""
    code, err = run_main([*BASE, "--runs-dir", str(runs), *argv], capsys)
    lines = err.splitlines()
    assert code == 2, (argv, err)
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and lines[-1] == errors[0], (argv, err)
    assert lines[-1].startswith(("sparsecore train: error: ", "sparsecore: error: ")), (argv, err)
    assert names in lines[-1], (argv, names, lines[-1])
    usage = lines[:-1]
    assert not usage or (usage[0].startswith("usage: ") and all(line[:1] == " " for line in usage[1:])), err
    assert not runs.exists() or list(runs.iterdir()) == [], (argv, sorted(runs.iterdir()))


@pytest.fixture
def fresh_runs_dir(tmp_path):
    """A new (not yet existing) runs directory for each example."""
    return lambda: tmp_path / uuid.uuid4().hex


@EXAMPLES
@given(case=st.sampled_from(["--lr", "--density", "--momentum", "--weight-decay", "--epochs", "--batch-size"]).flatmap(
    bad_value))
@example(case=(["--lr=1e400"], "--lr"))
@example(case=(["--density=0"], "--density"))
@example(case=(["--momentum=1"], "--momentum"))
@example(case=(["--batch-size=-3"], "--batch-size"))
def test_bad_numbers_are_one_line_naming_the_flag(case, capsys, fresh_runs_dir):
    assert_refused(*case, capsys, fresh_runs_dir())


@EXAMPLES
@given(case=bad_run_name())
@example(case=(["--run-name=" + "x\n" * 200], "File name too long"))  # the message stays one line
def test_bad_run_names_are_one_line(case, capsys, fresh_runs_dir):
    assert_refused(*case, capsys, fresh_runs_dir())


@EXAMPLES
@given(kind=st.sampled_from(["a file", "under a file", "with NUL"]), name=argv_text.filter(
    lambda t: t.strip() and not any(c in t for c in "/\0") and t not in (".", "..")))
def test_bad_runs_dirs_are_one_line_naming_the_flag(kind, name, tmp_path, capsys):
    file = tmp_path / f"file-{uuid.uuid4().hex}"
    file.write_text("a file, not a directory\n")
    runs = {"a file": str(file), "under a file": str(file / name), "with NUL": str(tmp_path / f"{name}\0runs")}[kind]
    code, err = run_main([*BASE, "--runs-dir", runs], capsys)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("sparsecore train: error: --runs-dir "), err
    assert file.read_text() == "a file, not a directory\n"


@EXAMPLES
@given(case=bad_option())
def test_bad_options_are_one_line(case, capsys, fresh_runs_dir):
    assert_refused(*case, capsys, fresh_runs_dir())


@EXAMPLES
@given(case=st.sampled_from(["--algorithm", "--model", "--dataset"]).flatmap(unknown_name))
@example(case=(["--algorithm="], "''"))
@example(case=(["--algorithm=nope:set"], "'nope:set'"))
def test_unknown_names_are_one_line_naming_them(case, capsys, fresh_runs_dir):
    assert_refused(*case, capsys, fresh_runs_dir())


@EXAMPLES
@given(case=unknown_flag())
def test_unknown_flags_are_one_line_naming_them(case, capsys, fresh_runs_dir):
    assert_refused(*case, capsys, fresh_runs_dir())


@EXAMPLES
@given(algorithm=st.sampled_from(sorted(sparsecore.available_algorithms())), data=st.data())
def test_any_option_value_is_taken_or_refused_in_one_line(algorithm, data, capsys, fresh_runs_dir):
    """A random value for one of an algorithm's own options: the run trains (exit 0) or is refused in one line."""
    accepted = [p for p in inspect.signature(registry.algorithm(algorithm).factory).parameters
                if p not in ("self", "batch", "loader", "loss_fn")]  # snip's Python-only options
    assume(accepted)
    key = data.draw(st.sampled_from(accepted), label="option")
    value = data.draw(st.one_of(
        st.integers(-3, 10**6).map(str), floats_text(), non_finite(), st.sampled_from(["true", "none", "[]", "{}"]),
        st.lists(st.floats(-2, 2, allow_nan=False), max_size=4).map(repr), argv_text.filter(
            lambda t: t.strip()[:1] not in ("[", "{", '"'))), label="value")
    runs = fresh_runs_dir()
    argv = [*BASE, "--algorithm", algorithm, "--option", f"{key}={value}", "--runs-dir", str(runs)]
    code, err = run_main(argv, capsys)
    if code == 0:
        assert err == "" and len(list(runs.iterdir())) == 1, (argv, err)
    else:
        assert code == 2, (argv, err)
        assert len(err.splitlines()) == 1 and err.startswith("sparsecore train: error: "), (argv, err)


def test_the_base_run_trains(capsys, tmp_path):
    """The control: the run every case above starts from trains, so their refusals come from the bad flags."""
    code, err = run_main([*BASE, "--runs-dir", str(tmp_path / "runs")], capsys)
    assert (code, err) == (0, "")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "metrics.jsonl").read_text().count("\n") == 1
