"""A tiny StatsD client (UDP, fire and forget): metrics never block or fail a job."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping

from lakehouse.settings import Settings

log = logging.getLogger(__name__)


class StatsD:
    """Sends counters, gauges and timers; ``tags`` use the DogStatsD ``|#k:v`` extension."""

    def __init__(self, host: str, port: int, prefix: str) -> None:
        self._addr = (host, port)
        self._prefix = prefix.rstrip(".")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.setblocking(False)

    @classmethod
    def from_settings(cls, settings: Settings) -> StatsD:
        return cls(settings.statsd_host, settings.statsd_port, settings.statsd_prefix)

    def _send(self, name: str, value: float, kind: str, tags: Mapping[str, object] | None) -> None:
        line = f"{self._prefix}.{name}:{value:g}|{kind}"
        if tags:
            line += "|#" + ",".join(f"{k}:{v}" for k, v in sorted(tags.items()))
        try:
            self._sock.sendto(line.encode(), self._addr)
        except OSError as err:  # UDP to a closed port / full buffer: metrics are best effort by design.
            log.debug("statsd send failed: %s", err)

    def incr(self, name: str, value: float = 1, tags: Mapping[str, object] | None = None) -> None:
        self._send(name, value, "c", tags)

    def gauge(self, name: str, value: float, tags: Mapping[str, object] | None = None) -> None:
        self._send(name, value, "g", tags)

    def timing(self, name: str, ms: float, tags: Mapping[str, object] | None = None) -> None:
        self._send(name, ms, "ms", tags)

    def close(self) -> None:
        self._sock.close()
