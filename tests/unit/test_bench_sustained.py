"""The sustained benchmark's analysis: windows, percentiles, per-minute buckets, lag and its slope,
freshness, missing trades, Airflow/alert/run-report summaries and the BENCH line format."""

from __future__ import annotations

import argparse
import struct

import numpy as np
import pytest

from lakehouse.bench import sustained_analysis as an

T0 = 1_000_000.0


def framed(message_id: str, rest: bytes = b"\x02x") -> bytes:
    """A Confluent-framed value whose first Avro field is the string ``message_id``."""
    data = message_id.encode()
    zigzag = len(data) << 1
    varint = bytearray()
    while True:
        byte = zigzag & 0x7F
        zigzag >>= 7
        varint.append(byte | (0x80 if zigzag else 0))
        if not zigzag:
            break
    return b"\x00" + struct.pack(">I", 7) + bytes(varint) + data + rest


def test_steady_window_starts_after_the_warmup_and_ends_when_the_producers_stop() -> None:
    assert an.steady_window(T0, T0 + 600, 120) == an.Window(T0 + 120, T0 + 600)
    assert an.steady_window(T0, T0 + 100, 120) is None
    window = an.Window(10.0, 20.0)
    assert 10.0 in window and 20.0 in window and 15 in window
    assert 9.99 not in window and 20.01 not in window and None not in window
    assert window.seconds == 10.0


def test_percentile_and_summary() -> None:
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert an.percentile(values, 50) == 3.0
    assert an.percentile(values, 100) == 5.0
    assert an.percentile(list(range(101)), 99) == pytest.approx(99.0)
    assert an.percentile([], 50) is None
    assert an.summary(values) == {"count": 5, "p50": 3.0, "p99": pytest.approx(4.96), "max": 5.0}
    assert an.summary([]) == {"count": 0, "p50": None, "p99": None, "max": None}
    assert an.median([4.0, 1.0, 2.0, 3.0]) == 2.5
    assert an.median([]) is None


def test_linear_slope() -> None:
    assert an.linear_slope([0, 1, 2, 3], [10, 12, 14, 16]) == pytest.approx(2.0)
    assert an.linear_slope([0, 1, 2, 3], [5, 5, 5, 5]) == pytest.approx(0.0)
    assert an.linear_slope([0, 1], [0, 1]) is None  # too few points
    assert an.linear_slope([2, 2, 2], [0, 1, 2]) is None  # no spread in x
    with pytest.raises(ValueError):
        an.linear_slope([0, 1, 2], [0, 1])


def test_produced_by_and_seconds_behind() -> None:
    ts = [T0 + 1, T0 + 2, T0 + 3, T0 + 10]
    assert an.produced_by(ts, T0) == 0
    assert an.produced_by(ts, T0 + 2) == 2  # at or before
    assert an.produced_by(ts, T0 + 100) == 4
    # Gold holds the first record: the oldest one missing was produced at T0 + 2.
    assert an.seconds_behind(T0 + 5, 1, ts) == pytest.approx(3.0)
    assert an.seconds_behind(T0 + 5, 0, ts) == pytest.approx(4.0)
    assert an.seconds_behind(T0 + 5, 3, ts) == 0.0  # everything produced by then is in Gold
    assert an.seconds_behind(T0 + 20, 3, ts) == pytest.approx(10.0)


def test_lag_series_uses_producer_times_or_falls_back_to_reported_ends() -> None:
    ts = [T0 + 1, T0 + 2, T0 + 3]
    samples = [an.Sample(T0 + 2.5, end_offsets=1, tables={"gold": 1}), an.Sample(T0 + 4, end_offsets=3, tables={})]
    exact = an.lag_series(samples, ts)
    assert exact[0] == {"t": T0 + 2.5, "produced": 2, "gold": 1, "lag": 1, "seconds_behind": pytest.approx(0.5)}
    assert exact[1]["lag"] is None and exact[1]["seconds_behind"] is None  # tables not read in that sample
    reported = an.lag_series(samples, None)
    assert reported[0]["produced"] == 1 and reported[0]["lag"] == 0 and reported[0]["seconds_behind"] is None


def series(lags: list[tuple[float, float]]) -> list[dict[str, float]]:
    return [{"t": T0 + minute * 60, "lag": lag} for minute, lag in lags]


def test_lag_slope_between_minutes_5_and_15_in_records_per_minute() -> None:
    growing = series([(m, 1000 + 50 * m) for m in range(0, 18)])
    assert an.lag_slope(growing, T0, 5, 15, produced_until=T0 + 15 * 60) == pytest.approx(50.0)
    sawtooth = series([(m + s / 6, (s * 100) % 600) for m in range(0, 18) for s in range(6)])
    assert abs(an.lag_slope(sawtooth, T0, 5, 15, produced_until=T0 + 17 * 60)) < 5  # bounded
    # Samples outside the window do not count.
    bent = series([(m, 0 if m < 5 else 10 * (m - 5)) for m in range(0, 18)])
    assert an.lag_slope(bent, T0, 5, 15, produced_until=T0 + 20 * 60) == pytest.approx(10.0)


def test_lag_slope_is_none_when_the_producers_stopped_inside_the_window() -> None:
    draining = series([(m, max(0, 1000 - 300 * (m - 4))) for m in range(0, 18)])
    assert an.lag_slope(draining, T0, 5, 15, produced_until=T0 + 4 * 60) is None
    assert an.lag_slope(draining, T0, 5, 15, produced_until=T0 + 15 * 60 - 2) is not None  # within tolerance
    assert an.lag_slope(series([(5, 1), (6, 2)]), T0, 5, 15, produced_until=T0 + 15 * 60) is None


def test_minutes_are_one_based_and_right_closed() -> None:
    assert an.minute_of([T0 + 0.5, T0 + 60, T0 + 60.1, T0 + 179], T0).tolist() == [1, 1, 2, 3]


def test_per_minute_stats_bucket_values_by_producer_minute() -> None:
    times = [T0 + 10, T0 + 20, T0 + 70, T0 + 130, T0 + 140, T0 + 150]
    values = [1.0, 3.0, 7.0, 2.0, 4.0, 9.0]
    rows = an.per_minute_stats(times, values, T0, 4)
    assert [r["minute"] for r in rows] == [1, 2, 3, 4]
    assert [r["count"] for r in rows] == [2, 1, 3, 0]
    assert rows[0]["p50"] == 2.0 and rows[0]["max"] == 3.0
    assert rows[2]["p50"] == 4.0 and rows[2]["max"] == 9.0
    assert rows[3]["p50"] is None


def test_last_sample_at_respects_the_tolerance() -> None:
    samples = [an.Sample(T0 + 50), an.Sample(T0 + 58), an.Sample(T0 + 63)]
    assert an.last_sample_at(samples, T0 + 60, 15).t == T0 + 58
    assert an.last_sample_at(samples, T0 + 120, 15) is None
    assert an.last_sample_at(samples, T0 + 10, 15) is None


def test_per_minute_table() -> None:
    ts = [T0 + 5, T0 + 30, T0 + 61, T0 + 90, T0 + 100, T0 + 170]
    samples = [an.Sample(T0 + 58, 2, {"bronze": 2, "silver": 1, "dlq": 0, "gold": 0}),
               an.Sample(T0 + 119, 4, {"bronze": 5, "silver": 5, "dlq": 0, "gold": 2}),
               an.Sample(T0 + 240, 6, {"bronze": 6, "silver": 6, "dlq": 0, "gold": 6})]
    rows = an.per_minute_table(samples, ts, T0, 4)
    assert [r["produced_total"] for r in rows] == [2, 5, 6, 6]
    assert [r["produced"] for r in rows] == [2, 3, 1, 0]
    assert rows[0]["lag"] == 2 and rows[0]["seconds_behind"] == pytest.approx(53.0)
    assert rows[1]["gold"] == 2 and rows[1]["lag"] == 3  # 5 produced by the sample at 119 s
    assert rows[2]["sample_t"] is None and rows[2]["lag"] is None  # no sample within 15 s of 180 s
    assert rows[3]["lag"] == 0 and rows[3]["seconds_behind"] == 0.0
    fallback = an.per_minute_table(samples, None, T0, 2)
    assert [r["produced_total"] for r in fallback] == [2, 4]
    assert [r["produced"] for r in fallback] == [2, 2]


def test_message_id_is_read_from_the_first_avro_field() -> None:
    mid = "0f8c4f39-7d3b-5a4e-9b7c-1a2b3c4d5e6f"
    assert an.message_id_of(framed(mid)) == mid
    long_id = "x" * 200  # a two-byte varint length
    assert an.message_id_of(framed(long_id)) == long_id
    assert an.message_id_of(None) is None
    assert an.message_id_of(b"") is None
    assert an.message_id_of(b"\x01" + framed(mid)[1:]) is None  # wrong magic byte
    assert an.message_id_of(framed(mid)[:20]) is None  # truncated
    assert an.message_id_of(b"\x00\x00\x00\x00\x07\x01abc") is None  # negative length


def test_freshness_of_the_gold_rows_produced_in_the_window() -> None:
    producer_us = np.array([100, 200, 300, 400], dtype=np.int64) * 1_000_000
    gold_us = np.array([110, 230, np.nan, 401], dtype=np.float64) * 1_000_000
    times, fresh = an.freshness_seconds(producer_us, gold_us, an.Window(150, 400))
    assert times.tolist() == [200.0, 400.0]
    assert fresh.tolist() == pytest.approx([30.0, 1.0])  # the row without a Gold time is left out


def test_missing_from_gold_counts_window_trades_whose_id_gold_lacks() -> None:
    ids = ["a", "b", "c", "d", None]
    ts = [10.0, 20.0, 30.0, 40.0, 25.0]
    assert an.missing_from_gold(ids, ts, ["a", "c", "zz"], an.Window(15, 35)) == 2  # b and the id-less record
    assert an.missing_from_gold(ids, ts, ["b", "c"], an.Window(15, 30)) == 1
    assert an.missing_from_gold(ids, ts, [], an.Window(100, 200)) == 0


def test_parse_time_reads_airflow_and_alert_times_as_utc() -> None:
    assert an.parse_time("1970-01-01 00:01:40.500000") == pytest.approx(100.5)
    assert an.parse_time("1970-01-01T00:01:40+00:00") == pytest.approx(100.0)
    assert an.parse_time("1970-01-01T01:01:40+01:00") == pytest.approx(100.0)
    assert an.parse_time("1970-01-01T00:01:40.000Z") == pytest.approx(100.0)
    assert an.parse_time(None) is None and an.parse_time("yesterday") is None


def test_task_summary_per_layer() -> None:
    def ti(dag: str, state: str, start: float, duration: float | None) -> an.TaskTry:
        return an.TaskTry(dag, "t", f"r{start}", 1, state, T0 + start, None, duration)

    tries = [ti("bronze_ingestion", "success", 10, 30.0), ti("bronze_ingestion", "success", 200, 20.0),
             ti("bronze_ingestion", "success", 260, 40.0), ti("bronze_ingestion", "up_for_retry", 300, 5.0),
             ti("gold_aggregation", "failed", 50, 8.0), ti("gold_aggregation", "running", 400, None),
             ti("gold_aggregation", "skipped", 300, 2.0),
             ti("other_dag", "failed", 300, 1.0)]
    out = an.task_summary(tries, {"bronze_ingestion": "bronze", "gold_aggregation": "gold"},
                          an.Window(T0 + 120, T0 + 600), after=T0 + 120)
    assert out["bronze"] == {"tries": 4, "skipped": 0, "steady_finished": 3, "duration_p50_s": 20.0,
                             "duration_max_s": 40.0, "failed": 1, "failed_after_warmup": 1}
    assert out["gold"]["failed"] == 1 and out["gold"]["failed_after_warmup"] == 0
    assert out["gold"]["skipped"] == 1 and out["gold"]["duration_p50_s"] is None  # skipped tries are no durations
    assert "other_dag" not in out


def test_alert_counts_split_at_the_end_of_the_warmup() -> None:
    alerts = [{"event": "deadline_missed", "layer": "gold", "emitted_at": "1970-01-01T00:00:50+00:00"},
              {"event": "deadline_missed", "layer": "gold", "emitted_at": "1970-01-01T00:03:00+00:00"},
              {"event": "deadline_missed", "dag_id": "bronze_ingestion", "emitted_at": "1970-01-01T00:04:00Z"},
              {"event": "task_failed", "layer": "silver", "emitted_at": "1970-01-01T00:04:00+00:00"}]
    out = an.alert_counts(alerts, "deadline_missed", after=120.0)
    assert out == {"total": 3, "after_warmup": 2, "by_layer": {"gold": 2, "bronze_ingestion": 1}}
    assert an.alert_counts([], "deadline_missed", 0.0)["total"] == 0


def test_phase_medians_of_the_run_reports_in_the_window() -> None:
    reports = [{"submitted_at": 10.0, "phases": {"startup": 12.0, "work": 1.0}},
               {"submitted_at": 20.0, "phases": {"startup": 14.0, "work": 3.0, "commit": 0.5}},
               {"submitted_at": 30.0, "phases": {"startup": 30.0, "work": 2.0}},
               {"submitted_at": None, "finished_at": 25.0, "phases": {"startup": 100.0}},
               {"submitted_at": 500.0, "phases": {"startup": 1.0}}]
    out = an.phase_medians(reports, ("startup", "work", "commit", "exit"), an.Window(0, 40))
    assert out["runs"] == 4
    assert out["phases"] == {"startup": 22.0, "work": 2.0, "commit": 0.5, "exit": None}
    assert an.phase_medians([], ("startup",), None) == {"runs": 0, "phases": {"startup": None}}


def test_bench_lines() -> None:
    assert an.bench_line("sustained_gold_freshness_p99_s", 97.26, "s") == "BENCH sustained_gold_freshness_p99_s 97.3 s"
    assert an.bench_line("sustained_lag_slope_min5_15", -120.4, "rec/min") == "BENCH sustained_lag_slope_min5_15 -120 rec/min"
    assert an.bench_line("sustained_failed_tasks", 0, "count") == "BENCH sustained_failed_tasks 0 count"
    assert an.bench_line("bronze_startup_s", None, "s") == "BENCH bronze_startup_s n/a s"
    assert an.bench_line("x", float("nan"), "s") == "BENCH x n/a s"
    with pytest.raises(ValueError):
        an.bench_line("two words", 1.0, "s")


def test_the_command_line_options() -> None:
    from lakehouse.bench import sustained

    parser = argparse.ArgumentParser()
    sustained.add_arguments(parser)
    args = parser.parse_args(["--rate", "400", "--minutes", "4", "--drain-minutes", "2",
                              "--set", "LAKEHOUSE_DEADLINE_GOLD_S=240"])
    assert (args.rate, args.minutes, args.drain_minutes, args.warmup_minutes) == (400.0, 4.0, 2.0, 2.0)
    assert args.settings == [("LAKEHOUSE_DEADLINE_GOLD_S", "240")]
    for bad in (["--rate", "0"], ["--drain-minutes", "-1"], ["--set", "DEADLINE=1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
