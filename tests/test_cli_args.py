"""The shared flag helpers (collector/commands/_args.py) and the day flags of cost, reconcile and storage."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from datetime import date
from pathlib import Path

import duckdb
import pytest

from collector.cli import build_parser, command_modules, main
from collector.commands._args import check_span, parse_day, parse_span

# (argv before the day flag, the day flag, the flag that closes the span, whether that flag's day is included)
DAY_COMMANDS = [
    (["cost"], "--from", "--to", True),
    (["cost"], "--from", "--until", False),
    (["reconcile"], "--from", "--to", True),
    (["storage", "report"], "--from", "--to", True),
    (["storage", "whatif", "--idle-days", "3"], "--from", "--to", True),
]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A migrated store with three runs: two on 2026-02-01 (one at 23:59:59) and one at 2026-02-02 00:00."""
    from collector.store.migrations import migrate

    path = tmp_path / "store.duckdb"
    with duckdb.connect(str(path)) as con:
        migrate(con)
        for run_id, started in [("a", "2026-02-01 00:00:00"), ("b", "2026-02-01 23:59:59"),
                                ("c", "2026-02-02 00:00:00")]:
            con.execute(
                "INSERT INTO runs (run_id, api, model, started_at, input_tokens, cached_input_tokens, "
                "output_tokens, file_search_calls) VALUES (?, 'chat', 'gpt-4o', CAST(? AS TIMESTAMPTZ), "
                "1000, 0, 100, 0)", [run_id, started + "+00"])
    return path


def _subcommand(parser: argparse.ArgumentParser, *path: str) -> argparse.ArgumentParser:
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


# --- parsing ---------------------------------------------------------------------------------------------


def test_parse_day_takes_only_yyyy_mm_dd() -> None:
    assert parse_day(None, "--since") is None
    assert parse_day("2024-02-29", "--since") == date(2024, 2, 29)
    # date.fromisoformat reads these on 3.11; the help promises YYYY-MM-DD only
    for bad in ["20240229", "2024-W09-4", "2024-02-29T00:00", " 2024-02-29", "2023-02-29", "2024-13-01",
                "yesterday", "", "２０２４-０２-２９"]:
        with pytest.raises(ValueError) as info:
            parse_day(bad, "--since")
        assert str(info.value) == f"--since {bad!r} is not a date (YYYY-MM-DD)"


def test_check_span_included_and_excluded_last_day() -> None:
    d1, d2 = date(2025, 1, 1), date(2025, 1, 2)
    check_span(d1, "--from", d1, "--to")  # one included day is a span
    check_span(d1, "--since", d2, "--until", last_included=False)
    with pytest.raises(ValueError, match=r"^--to 2025-01-01 is before --from 2025-01-02$"):
        check_span(d2, "--from", d1, "--to")
    with pytest.raises(ValueError, match=r"^--until 2025-01-01 is not after --since 2025-01-01 \(its day is"):
        check_span(d1, "--since", d1, "--until", last_included=False)
    with pytest.raises(ValueError, match=r"^--until 2025-01-01 is before --since 2025-01-02$"):
        check_span(d2, "--since", d1, "--until", last_included=False)
    with pytest.raises(ValueError, match=r"^the last poll's day 2025-01-01 is before --from 2025-01-02$"):
        check_span(d2, "--from", d1, "the last poll's day")


def test_parse_span_checks_order_only_when_both_are_given() -> None:
    assert parse_span(None, "--from", "2025-01-01", "--to") == (None, date(2025, 1, 1))
    assert parse_span("2025-01-03", "--from", None, "--to") == (date(2025, 1, 3), None)
    with pytest.raises(ValueError, match="--to 2025-01-01 is before --from 2025-01-03"):
        parse_span("2025-01-03", "--from", "2025-01-01", "--to")
    with pytest.raises(ValueError, match="--from 'x' is not a date"):  # the first bad value is named
        parse_span("x", "--from", "y", "--to")


# --- the commands ----------------------------------------------------------------------------------------


def test_helper_modules_are_not_subcommands() -> None:
    names = [m.__name__.rsplit(".", 1)[1] for m in command_modules()]
    assert "_args" not in names and "_table" not in names
    assert not [n for n in names if n.startswith("_")]
    assert {"cost", "reconcile", "storage"} <= set(names)


def test_day_flags_share_one_metavar_and_say_utc_day() -> None:
    parser = build_parser()
    for prefix, first, last, _ in DAY_COMMANDS:
        p = _subcommand(parser, *prefix[:2] if prefix[0] == "storage" else prefix[:1])
        flags = {a.option_strings[0]: a for a in p._actions if a.option_strings}
        for flag in (first, last):
            assert flags[flag].metavar == "YYYY-MM-DD", (prefix, flag)
            assert flags[flag].default is None
            assert "UTC day" in (flags[flag].help or ""), (prefix, flag)
        assert flags["--db"].help == "path of the store (env RUNMETER_DB; default ./runmeter.duckdb)"
        assert flags["--json"].help == "print JSON instead of tables"


@pytest.mark.parametrize("bad", ["yesterday", "2025-13-01", "2025-02-30", "20250101", "2025-W01-1"])
@pytest.mark.parametrize(("prefix", "first", "last", "included"), DAY_COMMANDS)
def test_a_bad_day_is_the_same_one_line_error_in_every_command(
    store: Path, capsys: pytest.CaptureFixture[str], prefix: list[str], first: str, last: str, included: bool,
    bad: str,
) -> None:
    before = store.read_bytes()
    for flag in (first, last):
        code = main([*prefix, "--db", str(store), flag, bad])
        out, err = capsys.readouterr()
        assert (code, out) == (2, "")
        # the date is checked before the store, the admin key (reconcile) or the snapshots (storage)
        assert err == f"runmeter {prefix[0]}: error: {flag} {bad!r} is not a date (YYYY-MM-DD)\n"
    assert store.read_bytes() == before


@pytest.mark.parametrize(("prefix", "first", "last", "included"), DAY_COMMANDS)
def test_a_reversed_span_is_one_line_naming_both_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], prefix: list[str], first: str, last: str,
    included: bool,
) -> None:
    missing = tmp_path / "missing.duckdb"
    code = main([*prefix, "--db", str(missing), first, "2025-03-02", last, "2025-03-01"])
    assert code == 2
    assert capsys.readouterr().err == (f"runmeter {prefix[0]}: error: {last} 2025-03-01 is before {first} "
                                       "2025-03-02\n")
    code = main([*prefix, "--db", str(missing), first, "2025-03-02", last, "2025-03-02"])
    err = capsys.readouterr().err
    if included:  # one day is a span: the command goes on and stops at the missing store or admin key
        assert code == 2 and err.count("\n") == 1 and "2025-03-02" not in err, err
    else:
        assert err == (f"runmeter {prefix[0]}: error: {last} 2025-03-02 is not after {first} 2025-03-02 "
                       "(its day is excluded)\n")
    assert not missing.exists()


def test_bad_day_lines_from_the_real_console_script(tmp_path: Path) -> None:
    lines = []
    for argv in (["cost", "--from"], ["reconcile", "--from"], ["storage", "report", "--from"]):
        proc = subprocess.run([sys.executable, "-m", "collector.cli", *argv, "2025-13-01",
                               "--db", str(tmp_path / "x.duckdb")],
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout) == (2, "")
        lines.append(proc.stderr)
    assert lines == [
        "runmeter cost: error: --from '2025-13-01' is not a date (YYYY-MM-DD)\n",
        "runmeter reconcile: error: --from '2025-13-01' is not a date (YYYY-MM-DD)\n",
        "runmeter storage: error: --from '2025-13-01' is not a date (YYYY-MM-DD)\n",
    ]


def test_cost_since_and_until_select_utc_days(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def runs(*flags: str) -> int:
        assert main(["cost", "--db", str(store), "--by", "day", "--json", *flags]) == 0
        return sum(g["runs"] for g in json.loads(capsys.readouterr().out))

    assert runs() == 3
    assert runs("--since", "2026-02-01", "--until", "2026-02-02") == 2  # --until's day is excluded
    assert runs("--since", "2026-02-02") == 1
    assert runs("--until", "2026-02-01") == 0
    assert runs("--since", "2026-02-01", "--until", "2026-02-03") == 3
    # --from/--to, both days included, as in reconcile and storage (--since is --from's older name)
    assert runs("--from", "2026-02-01", "--to", "2026-02-01") == 2
    assert runs("--from", "2026-02-02", "--to", "2026-02-02") == 1
    assert runs("--to", "2026-02-02") == 3
    assert main(["cost", "--db", str(store), "--to", "2026-02-02", "--until", "2026-02-03"]) == 2
    assert capsys.readouterr().err == ("runmeter cost: error: give --to (included) or --until (excluded), "
                                       "not both\n")


def test_older_day_flag_names_still_work(store: Path) -> None:
    parser = build_parser()
    old = parser.parse_args(["reconcile", "--start", "2026-02-01", "--end", "2026-02-02"])
    new = parser.parse_args(["reconcile", "--from", "2026-02-01", "--to", "2026-02-02"])
    assert (old.start, old.end) == (new.start, new.end) == ("2026-02-01", "2026-02-02")
    assert parser.parse_args(["cost", "--since", "2026-02-01"]).since == "2026-02-01"


def test_the_last_representable_day_is_an_error_not_a_traceback(store: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["cost", "--to"], ["cost", "--until"], ["reconcile", "--to"], ["storage", "report", "--to"]):
        assert main([*argv, "9999-12-31", "--db", str(store)]) == 2
        err = capsys.readouterr().err
        assert err.endswith(f"error: {argv[-1]} '9999-12-31' is past the last day runmeter counts to "
                            "(9999-12-30)\n"), err
    assert main(["cost", "--db", str(store), "--to", "9999-12-30", "--json"]) == 0  # the day before is fine
    assert sum(g["runs"] for g in json.loads(capsys.readouterr().out)) == 3


def test_a_day_error_names_the_flag_as_typed(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv, flag in ((["cost", "--since", "x"], "--since"), (["cost", "--from", "x"], "--from"),
                       (["reconcile", "--end", "x"], "--end"), (["reconcile", "--to", "x"], "--to")):
        assert main([*argv, "--db", str(store)]) == 2
        err = capsys.readouterr().err
        assert err == f"runmeter {argv[0]}: error: {flag} 'x' is not a date (YYYY-MM-DD)\n"
    assert main(["cost", "--db", str(store), "--since", "2026-02-02", "--until", "2026-02-01"]) == 2
    err = capsys.readouterr().err
    assert err == "runmeter cost: error: --until 2026-02-01 is before --since 2026-02-02\n"


def test_reconcile_start_after_the_store_names_the_default(store: Path, capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_ADMIN_KEY", "sk-admin-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # never reached: the span fails first
    assert main(["reconcile", "--db", str(store), "--from", "2026-03-01"]) == 2
    assert capsys.readouterr().err == ("runmeter reconcile: error: the store's last day 2026-02-02 is before "
                                       "--from 2026-03-01\n")
