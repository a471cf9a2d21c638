"""``lakehouse produce --dry-run`` and ``lakehouse generate`` without a broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import make_env

from lakehouse.cli import CliError, build_parser
from lakehouse.producer.generator import generate_frames
from lakehouse.producer.replay import read_frames
from lakehouse.settings import Settings, load_settings

FRAMES = Path(__file__).resolve().parents[1] / "fixtures" / "frames"


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return load_settings(make_env(tmp_path / "home"))


def run(settings: Settings, *argv: str) -> int:
    args = build_parser().parse_args(list(argv))
    return int(args.func(args, settings))


def test_dry_run_replay_prints_the_summary(settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    recording = tmp_path / "kraken.jsonl"
    recording.write_text("".join((FRAMES / name).read_text() for name in
                                 ("kraken_trades.jsonl", "kraken_non_trade.jsonl", "kraken_malformed.jsonl")))
    assert run(settings, "produce", "--exchange", "kraken", "--replay", str(recording), "--dry-run") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("produce kraken: frames=24 produced=5 skipped=6 rejected=14 delivery_errors=0 in ")


def test_dry_run_defaults_to_the_shipped_sample_and_loops(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(settings, "produce", "--exchange", "binance", "--dry-run", "--loop", "--max-trades", "9000",
               "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["produced"] == 9000 and summary["rejected"] == 0 and summary["exchange"] == "binance"
    assert summary["frames"] == summary["trade_frames"] + summary["skipped"] + summary["rejected"]


@pytest.mark.parametrize("argv,message", [
    (["--live", "--rate", "5"], "--rate apply to replay"),
    (["--symbols", "btcusdt"], "--symbols applies to --live"),
    (["--replay", "/nonexistent/recording.jsonl"], "does not exist"),
])
def test_bad_combinations_are_one_line_errors(settings: Settings, argv: list[str], message: str) -> None:
    with pytest.raises(CliError, match=message):
        run(settings, "produce", "--exchange", "binance", "--dry-run", *argv)


def test_an_exchange_outside_the_configured_ones_is_refused(tmp_path: Path) -> None:
    only_kraken = load_settings(make_env(tmp_path / "home", LAKEHOUSE_EXCHANGES="kraken"))
    with pytest.raises(CliError, match="not configured"):
        run(only_kraken, "produce", "--exchange", "binance", "--dry-run")


def test_rate_must_be_positive_at_parse_time() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["produce", "--exchange", "binance", "--rate", "0"])


def test_generate_writes_a_deterministic_recording(settings: Settings, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rec" / "binance.jsonl.gz"
    assert run(settings, "generate", "--exchange", "binance", "--trades", "120", "--out", str(out), "--seed", "4",
               "--start", "2024-05-01T12:00:00Z", "--time-unit", "us") == 0
    assert "120 trades" in capsys.readouterr().out
    start_us = 1_714_564_800_000_000
    assert [f.decode() for f in read_frames(out)] == list(
        generate_frames("binance", 120, seed=4, start_us=start_us, time_unit="us"))
    with pytest.raises(CliError):
        run(settings, "generate", "--exchange", "kraken", "--trades", "5", "--out", str(out), "--start", "soon")
