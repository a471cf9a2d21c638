"""Exchange frames -> unified V2 trade records (dicts in the field layout of ``trade_v2.avsc``).

A normalizer answers one question per raw frame: which trades does it carry?

* a list of records: a trade frame (Kraken frames may carry several trades, or none);
* ``None``: a frame that is not about trades (subscription answers, heartbeats, status,
  error notices); the caller counts it as skipped;
* :class:`RejectedFrame`: the frame cannot be normalized (not JSON, a missing field, a value
  that does not fit the schema). A frame is rejected as a whole, so every frame ends up
  either in the trade topic or in the rejects topic, never half in each.

The normalizers only check what the Avro schema needs; business rules (price > 0, times not
in the future) are Silver's, so a strange but representable trade reaches the lake and its
dead-letter table instead of disappearing here.
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import logging
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

log = logging.getLogger(__name__)

Record = dict[str, Any]

# message_id = uuid5(MESSAGE_ID_NAMESPACE, "EXCHANGE:symbol:trade_id"): the same exchange trade
# always gets the same id (Kraken snapshot after a reconnect, a replay), so Gold can dedupe.
MESSAGE_ID_NAMESPACE = uuid.UUID("5f1ac7c1-df32-4d1c-81b5-0313e457439e")

ASSET_CLASS = "crypto"
SUPPORTED_EXCHANGES = ("binance", "kraken")

# Epoch values at or above this are microseconds (year 5138 in ms; 1973 in us).
_MICROS_THRESHOLD = 100_000_000_000_000
_LONG_MAX = (1 << 63) - 1
_Q8 = decimal.Decimal("1E-8")
# 18 significant digits and exactness trapped: quantize() then fails for anything that does not
# fit decimal(18,8) instead of rounding it.
_FIT = decimal.Context(prec=18, traps=[decimal.Inexact, decimal.InvalidOperation, decimal.Overflow])
_DECODER = msgspec.json.Decoder(float_hook=decimal.Decimal)  # JSON numbers never go through float
_NS_BYTES = MESSAGE_ID_NAMESPACE.bytes
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_sha1 = hashlib.sha1
_NUMBERS = (decimal.Decimal, int)


class RejectedFrame(ValueError):
    """A frame that cannot become V2 records; ``reason`` is stored with it on the rejects topic."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def message_id(exchange: str, symbol: str, trade_id: str) -> str:
    """``str(uuid.uuid5(MESSAGE_ID_NAMESPACE, f"{exchange}:{symbol}:{trade_id}"))``, without the UUID object.

    Same bytes hashed and the same version/variant bits as :func:`uuid.uuid5` (the unit tests
    compare the two), at a fifth of the cost.
    """
    return message_id_from_prefix(message_id_prefix(exchange, symbol), trade_id)


def message_id_prefix(exchange: str, symbol: str) -> bytes:
    """The hashed bytes before the trade id; normalizers cache it per symbol."""
    return _NS_BYTES + f"{exchange}:{symbol}:".encode()


def message_id_from_prefix(prefix: bytes, trade_id: str) -> str:
    h = _sha1(prefix + trade_id.encode()).hexdigest()
    return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:32]}"


def now_us() -> int:
    return time.time_ns() // 1000


def fit_decimal(value: object, what: str) -> decimal.Decimal:
    """``value`` (a decimal string or number as sent) as a Decimal with scale 8, exactly, or reject."""
    kind = type(value)
    if kind is str and 9 < len(value) <= 19 and value[-9] == "." and value[-8:].isdigit():  # type: ignore[arg-type,index]
        # Binance's shape, "43012.12000000": already scale 8 and at most 18 digits.
        try:
            return _FIT.create_decimal(value)  # type: ignore[arg-type]
        except decimal.DecimalException as err:
            raise RejectedFrame(f"{what} {value!r} is not a decimal number") from err
    try:
        number = value if kind is decimal.Decimal else _FIT.create_decimal(value)  # type: ignore[arg-type]
        quantized = number.quantize(_Q8, context=_FIT)  # type: ignore[union-attr]
    except (decimal.DecimalException, TypeError, ValueError) as err:
        raise RejectedFrame(f"{what} {value!r} does not fit decimal(18,8)") from err
    if not quantized.is_finite():
        raise RejectedFrame(f"{what} {value!r} is not a finite number")
    return quantized


def decode_frame(raw: bytes | str) -> Any:
    try:
        return _DECODER.decode(raw)
    except msgspec.DecodeError as err:
        raise RejectedFrame(f"not JSON: {err}") from err


class Normalizer:
    """State shared by both exchanges: the platform sequence and the replay re-stamping.

    ``platform_sequence`` increases by one per record and starts at the process start time in
    microseconds, so a restarted producer continues above where the previous one stopped
    (unless it sustained more than a million records per second per exchange).

    Re-stamping (``restamp=True``, used by ``--loop``) moves each frame's trade times so that
    the frame's latest time equals its receipt time: a re-stamped trade is never later than its
    ``ingestion_timestamp`` (Silver dead-letters trades from the future). In iteration ``k`` of a
    loop (see :meth:`begin_iteration`) each symbol's trade ids are shifted by ``k`` times that
    symbol's id span in the recording, so ids continue upwards as on a live feed and every
    iteration has its own message_ids.
    """

    exchange = ""  # lower case: topic and settings name
    venue = ""  # upper case: the record's ``exchange`` field

    def __init__(self, *, sequence_start: int | None = None) -> None:
        self._sequence = (now_us() if sequence_start is None else sequence_start) - 1
        self.restamp = False
        self._iteration = 0
        self._id_ranges: dict[str, list[int]] = {}  # symbol -> [lowest, highest] trade id seen
        self._id_offsets: dict[str, int] = {}

    def normalize(self, raw: bytes | str, received_us: int) -> list[Record] | None:
        raise NotImplementedError

    def begin_iteration(self, iteration: int) -> None:
        """Start replay iteration ``iteration`` (0 = first): later ones shift ids by the spans seen in 0."""
        self._iteration = iteration
        self._id_offsets = {symbol: iteration * (high - low + 1) for symbol, (low, high) in self._id_ranges.items()}

    def _shift_id(self, symbol: str, trade_id: int) -> int:
        """Re-stamp mode: learn each symbol's id range in iteration 0, shift ids in later ones."""
        if self._iteration == 0:
            bounds = self._id_ranges.get(symbol)
            if bounds is None:
                self._id_ranges[symbol] = [trade_id, trade_id]
            elif trade_id < bounds[0]:
                bounds[0] = trade_id
            elif trade_id > bounds[1]:
                bounds[1] = trade_id
            return trade_id
        return trade_id + self._id_offsets.get(symbol, 0)


def _epoch_us(value: object, what: str) -> int:
    """An epoch time sent as ms or us (Binance ``timeUnit``) in microseconds."""
    if type(value) is not int or value <= 0:
        raise RejectedFrame(f"{what} {value!r} is not a positive integer epoch time")
    micros = value if value >= _MICROS_THRESHOLD else value * 1000
    if micros > _LONG_MAX:
        raise RejectedFrame(f"{what} {value!r} is out of range")
    return micros


class BinanceNormalizer(Normalizer):
    """Binance spot ``<symbol>@trade``: plain and combined-stream frames, ms or us times."""

    exchange = "binance"
    venue = "BINANCE"

    def __init__(self, quotes: Iterable[str], *, sequence_start: int | None = None) -> None:
        super().__init__(sequence_start=sequence_start)
        # Longest suffix first: FDUSD before USD-anything, USDT before a hypothetical DT.
        self._quotes = tuple(sorted({q.upper() for q in quotes}, key=len, reverse=True))
        self._symbols: dict[str, tuple[str, bytes]] = {}  # symbol -> (currency, message_id prefix)

    def currency(self, symbol: str) -> str:
        """The quote asset of a Binance symbol (``BTCUSDT`` -> ``USDT``): the longest known suffix."""
        upper = symbol.upper()
        found = next((q for q in self._quotes if upper.endswith(q) and len(upper) > len(q)), None)
        if found is None:
            raise RejectedFrame(f"symbol {symbol!r} does not end with a known quote asset "
                                f"(LAKEHOUSE_PRODUCER_BINANCE_QUOTES)")
        return found

    def normalize(self, raw: bytes | str, received_us: int) -> list[Record] | None:
        frame = decode_frame(raw)
        if type(frame) is not dict:
            raise RejectedFrame("frame is not a JSON object")
        stream = None
        if "stream" in frame and "data" in frame:
            stream, frame = frame["stream"], frame["data"]
            if type(stream) is not str or type(frame) is not dict:
                raise RejectedFrame("combined-stream frame needs a string 'stream' and an object 'data'")
        event = frame.get("e")
        if event == "trade":
            return [self._trade(frame, stream, received_us)]
        if event is not None or "result" in frame:
            return None  # another event type, or an answer to SUBSCRIBE / LIST_SUBSCRIPTIONS
        if "error" in frame or ("code" in frame and "msg" in frame):
            log.warning("binance error frame", extra={"exchange": self.exchange, "frame": frame})
            return None
        raise RejectedFrame("unrecognized frame: neither a trade event nor a subscription answer")

    def _symbol(self, symbol: object) -> tuple[str, bytes]:
        """(quote currency, message_id hash prefix) of a symbol, cached; rejects unusable symbols."""
        if type(symbol) is not str or not symbol:
            raise RejectedFrame(f"symbol 's' {symbol!r} is not a non-empty string")
        info = (self.currency(symbol), message_id_prefix("BINANCE", symbol))
        self._symbols[symbol] = info
        return info

    def _trade(self, f: dict[str, Any], stream: str | None, received_us: int) -> Record:
        try:
            symbol, trade_id, price, qty, trade_time, buyer_is_maker = f["s"], f["t"], f["p"], f["q"], f["T"], f["m"]
        except KeyError as err:
            raise RejectedFrame(f"trade frame lacks field {err.args[0]!r}") from err
        info = (self._symbols.get(symbol) if type(symbol) is str else None) or self._symbol(symbol)
        if type(trade_id) is not int or not 0 <= trade_id <= _LONG_MAX:
            raise RejectedFrame(f"trade id 't' {trade_id!r} is not a non-negative 64-bit integer")
        if type(buyer_is_maker) is not bool:
            raise RejectedFrame(f"buyer-is-maker 'm' {buyer_is_maker!r} is not a boolean")
        if type(trade_time) is int and 0 < trade_time < _MICROS_THRESHOLD:
            timestamp = trade_time * 1000  # milliseconds, the default time unit
        else:
            timestamp = _epoch_us(trade_time, "trade time 'T'")
        event_time = f.get("E")
        if event_time is None:
            event_us = None
        elif type(event_time) is int and 0 < event_time < _MICROS_THRESHOLD:
            event_us = event_time * 1000
        else:
            event_us = _epoch_us(event_time, "event time 'E'")
        if self.restamp:
            # The frame's latest time (normally the event time; the trade time when the exchange's
            # clocks disagree) lands on receipt: no trade is stamped after the moment it is
            # produced, and the gap between trade and event time is kept.
            shift = received_us - (timestamp if event_us is None else max(timestamp, event_us))
            timestamp += shift
            event_us = None if event_us is None else event_us + shift
            trade_id = self._shift_id(symbol, trade_id)
        vendor = {"buyer_is_maker": "true" if buyer_is_maker else "false"}
        if event_us is not None:
            vendor["event_time"] = str(event_us)
        if stream is not None:
            vendor["stream"] = stream
        tid = str(trade_id)
        self._sequence += 1
        return {
            "message_id": message_id_from_prefix(info[1], tid),
            "trade_id": tid,
            "symbol": symbol,
            "exchange": "BINANCE",
            "asset_class": ASSET_CLASS,
            "timestamp": timestamp,
            "price": fit_decimal(price, "price 'p'") if type(price) is str else _not_a_string("price 'p'", price),
            "quantity": fit_decimal(qty, "quantity 'q'") if type(qty) is str else _not_a_string("quantity 'q'", qty),
            "currency": info[0],
            "side": "SELL" if buyer_is_maker else "BUY",  # the buyer made the book: the taker sold
            "trade_conditions": [],
            "source_sequence": trade_id,
            "ingestion_timestamp": received_us,
            "platform_sequence": self._sequence,
            "vendor_data": vendor,
        }


def _not_a_string(what: str, value: object) -> Any:
    raise RejectedFrame(f"{what} {value!r} must be a decimal string")


class KrakenNormalizer(Normalizer):
    """Kraken spot WebSocket v2 ``trade`` channel: snapshot and update frames, several trades each."""

    exchange = "kraken"
    venue = "KRAKEN"
    _SIDES = {"buy": "BUY", "sell": "SELL"}

    def __init__(self, *, sequence_start: int | None = None) -> None:
        super().__init__(sequence_start=sequence_start)
        self._second_cache: dict[str, int] = {}
        self._symbols: dict[str, tuple[str, bytes]] = {}

    def normalize(self, raw: bytes | str, received_us: int) -> list[Record] | None:
        frame = decode_frame(raw)
        if type(frame) is not dict:
            raise RejectedFrame("frame is not a JSON object")
        channel = frame.get("channel")
        if channel == "trade":
            kind = frame.get("type")
            if kind != "update" and kind != "snapshot":
                raise RejectedFrame(f"trade frame type {kind!r} is neither 'snapshot' nor 'update'")
            data = frame.get("data")
            if type(data) is not list:
                raise RejectedFrame("trade frame has no 'data' list")
            records = [self._trade(t, kind, received_us) for t in data]
            if self.restamp and records:
                # The latest trade lands on receipt, the others keep their distance before it: no
                # trade is stamped after the moment it is produced, and the frame's order is kept.
                shift = received_us - max(r["timestamp"] for r in records)
                for r in records:
                    r["timestamp"] += shift
            return records
        if "method" in frame:  # subscribe/unsubscribe acknowledgements, pong
            if frame.get("success") is False:
                log.warning("kraken request failed", extra={"exchange": self.exchange, "frame": frame})
            return None
        if channel is not None:
            return None  # heartbeat, status, or a channel this producer does not follow
        if "error" in frame:
            log.warning("kraken error frame", extra={"exchange": self.exchange, "frame": frame})
            return None
        raise RejectedFrame("unrecognized frame: no 'channel' or 'method'")

    def timestamp_us(self, text: object) -> int:
        """RFC 3339 (``2023-09-25T07:49:37.708706Z``) -> epoch microseconds.

        Kraken's exact shape takes a fast path that caches the whole-second part; anything
        else goes through :meth:`datetime.fromisoformat` and must carry a time zone.
        """
        if type(text) is not str:
            raise RejectedFrame(f"timestamp {text!r} is not a string")
        if (len(text) == 27 and text[26] == "Z" and text[19] == "." and text.isascii()
                and text[20:26].isdigit()):
            second = self._second_cache.get(text[:19])
            if second is None:
                second = self._parse_us(text[:19] + "Z")
                if len(self._second_cache) >= 100_000:
                    self._second_cache.clear()
                self._second_cache[text[:19]] = second
            return second + int(text[20:26])
        return self._parse_us(text)

    @staticmethod
    def _parse_us(text: str) -> int:
        try:
            parsed = dt.datetime.fromisoformat(text)
        except ValueError as err:
            raise RejectedFrame(f"timestamp {text!r} is not RFC 3339") from err
        if parsed.tzinfo is None:
            raise RejectedFrame(f"timestamp {text!r} has no time zone")
        return (parsed - _EPOCH) // dt.timedelta(microseconds=1)

    def _symbol(self, symbol: object) -> tuple[str, bytes]:
        """(quote currency, message_id hash prefix) of a ``BASE/QUOTE`` symbol, cached."""
        if type(symbol) is not str or "/" not in symbol:
            raise RejectedFrame(f"symbol {symbol!r} is not BASE/QUOTE")
        base, _, currency = symbol.rpartition("/")
        if not base or not currency:
            raise RejectedFrame(f"symbol {symbol!r} is not BASE/QUOTE")
        info = (currency, message_id_prefix("KRAKEN", symbol))
        self._symbols[symbol] = info
        return info

    def _trade(self, t: object, kind: str, received_us: int) -> Record:
        if type(t) is not dict:
            raise RejectedFrame("trade entry in 'data' is not an object")
        try:
            symbol, side, price, qty, trade_id, stamp = (t["symbol"], t["side"], t["price"], t["qty"],
                                                         t["trade_id"], t["timestamp"])
        except KeyError as err:
            raise RejectedFrame(f"trade entry lacks field {err.args[0]!r}") from err
        info = (self._symbols.get(symbol) if type(symbol) is str else None) or self._symbol(symbol)
        if type(trade_id) is not int or not 0 <= trade_id <= _LONG_MAX:
            raise RejectedFrame(f"trade_id {trade_id!r} is not a non-negative 64-bit integer")
        taker = self._SIDES.get(side) if type(side) is str else None
        if taker is None:
            raise RejectedFrame(f"side {side!r} is neither 'buy' nor 'sell'")
        # JSON numbers arrive as Decimal (or int); a string or bool means the format changed.
        if type(price) not in _NUMBERS or type(qty) not in _NUMBERS:
            raise RejectedFrame(f"price {price!r} and qty {qty!r} must be JSON numbers")
        if self.restamp:
            trade_id = self._shift_id(symbol, trade_id)
        vendor = {"frame_type": kind}
        ord_type = t.get("ord_type")
        if type(ord_type) is str:
            vendor["ord_type"] = ord_type
        tid = str(trade_id)
        self._sequence += 1
        return {
            "message_id": message_id_from_prefix(info[1], tid),
            "trade_id": tid,
            "symbol": symbol,
            "exchange": "KRAKEN",
            "asset_class": ASSET_CLASS,
            "timestamp": self.timestamp_us(stamp),
            "price": fit_decimal(price, "price"),
            "quantity": fit_decimal(qty, "qty"),
            "currency": info[0],
            "side": taker,
            "trade_conditions": [],
            "source_sequence": trade_id,
            "ingestion_timestamp": received_us,
            "platform_sequence": self._sequence,
            "vendor_data": vendor,
        }


def normalizer_for(exchange: str, binance_quotes: Iterable[str] = (), *,
                   sequence_start: int | None = None) -> Normalizer:
    """The normalizer of a supported exchange (lower-case name)."""
    if exchange == "binance":
        return BinanceNormalizer(binance_quotes, sequence_start=sequence_start)
    if exchange == "kraken":
        return KrakenNormalizer(sequence_start=sequence_start)
    raise ValueError(f"no normalizer for exchange {exchange!r}; supported: {', '.join(SUPPORTED_EXCHANGES)}")
