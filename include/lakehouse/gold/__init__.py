"""Gold: every valid trade of every exchange once, hourly partitions, plus one-minute bars.

- :mod:`lakehouse.gold.transforms`: pure DataFrame transforms (Silver row -> Gold row, canonical
  instrument, in-batch dedupe, OHLCV bars) and the SQL predicates that restrict a MERGE target.
- :mod:`lakehouse.gold.writer`: one micro-batch: dedupe, ``MERGE`` into Gold restricted to the
  hour partitions the batch touches, recompute the touched bars from Gold, metrics.
- :mod:`lakehouse.gold.job`: the availableNow streaming run over every exchange's Silver table.
- :mod:`lakehouse.gold.plans`: Iceberg scan metrics read from an executed Spark plan.
- :mod:`lakehouse.gold.synthetic`: Silver trades generated at run time for tests and the benchmark.
"""
