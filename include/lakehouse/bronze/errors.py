"""Why a Bronze run failed. Every one means: nothing of this run was committed; the message is
one line naming the partition, range, table or service to look at."""

from __future__ import annotations

from lakehouse.errors import ConcurrentWriterError


class BronzeError(RuntimeError):
    """A Bronze run failed loudly; nothing of it was committed."""


class DataLossError(BronzeError):
    """Offsets Bronze never read are gone (retention) or the topic went backwards (recreated)."""


class ConcurrentRunError(BronzeError, ConcurrentWriterError):
    """Another Bronze run committed offsets after this run planned; this run committed nothing."""


class CommitError(BronzeError):
    """Writing or committing the run to Iceberg failed (catalog error, executor failure)."""


class TableMissingError(BronzeError):
    """The exchange's Bronze table does not exist."""


class KafkaUnavailableError(BronzeError):
    """Kafka did not answer, or made no progress, within the configured timeout."""


class TopicMissingError(BronzeError):
    """The exchange's topic does not exist on the cluster."""


class KafkaReadError(BronzeError):
    """An executor could not read its planned offset range (for example the topic changed mid-run)."""
