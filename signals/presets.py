"""Source presets and the field mapping that turns a provider's JSON into the Signal schema.

- `voiceofchain`: the signal contract's schema (README, "Signals") as is, signed with
  `X-Signature`.
- `tradingview`: an alert whose message is JSON, e.g.
  `{"token": "...", "ticker": "{{ticker}}", "action": "{{strategy.order.action}}",
  "sl": 95000, "tp1": 99000, "time": "{{timenow}}"}`. TradingView sends it as `text/plain`,
  cannot set headers and gives up after 3 s, so it authenticates with a token in the body; its
  published sender addresses can be allowed alone (`allow_preset_ips = true`). Its ticker of a
  Bybit perpetual chart, `BTCUSDT.P` (`BYBIT:BTCUSDT.P` with the exchange), is the symbol
  `BTCUSDT`.

A mapped body without an `id` gets one from the hash of its bytes and a time bucket
(`id_bucket_s`), so a provider's retry of the same alert is a duplicate. The time is the
signature's when the request is signed (a signed request sent again, however much later
within its validity, is then the same signal), else the time it was received.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from signals.config import AuthMode, FieldMapping, WebhookSourceConfig

__all__ = [
    "PRESETS",
    "TRADINGVIEW_SENDER_IPS",
    "Preset",
    "ResolvedSource",
    "bybit_symbol",
    "map_payload",
    "resolve",
]

#: TradingView's published webhook sender addresses.
TRADINGVIEW_SENDER_IPS: Final = ("52.89.214.238", "34.212.75.30", "54.218.53.128", "52.32.178.7")


@dataclass(frozen=True)
class Preset:
    auth: AuthMode
    mapping: FieldMapping | None
    sender_ips: tuple[str, ...] = ()


PRESETS: Final = {
    "voiceofchain": Preset("signature", None),
    "tradingview": Preset(
        "body_token",
        FieldMapping(
            fields={
                "symbol": "ticker",
                "side": "action",
                "action": "action",
                "stop_loss": "sl",
                "take_profit": ("tp1", "tp2", "tp3", "tp"),
                "ts": "time",
            },
            values={
                "side": {"buy": "buy", "sell": "sell", "long": "buy", "short": "sell"},
                "action": {"close": "close", "exit": "close", "flat": "close"},
            },
            tradingview_ticker=True,
        ),
        TRADINGVIEW_SENDER_IPS,
    ),
}


@dataclass(frozen=True)
class ResolvedSource:
    """A source's configuration with its preset applied."""

    name: str
    config: WebhookSourceConfig
    auth: AuthMode
    mapping: FieldMapping | None
    allowed_ips: tuple[str, ...]


def resolve(name: str, config: WebhookSourceConfig) -> ResolvedSource:
    """`config` on top of its preset (named, or the one named like the source)."""
    preset = PRESETS.get(config.preset or name, Preset("signature", None))
    allowed = config.allowed_ips + (preset.sender_ips if config.allow_preset_ips else ())
    return ResolvedSource(
        name=name,
        config=config,
        auth=config.auth or preset.auth,
        mapping=config.mapping if config.mapping is not None else preset.mapping,
        allowed_ips=allowed,
    )


def bybit_symbol(ticker: str) -> str:
    """The Bybit symbol of a TradingView ticker: `BYBIT:BTCUSDT.P` (exchange prefix, the
    perpetual contract's suffix) is `BTCUSDT`; a plain `BTCUSDT` stays as it is."""
    symbol = ticker.strip().rsplit(":", 1)[-1]
    return symbol[:-2] if symbol.endswith((".P", ".p")) else symbol


def map_payload(
    payload: dict[str, Any],
    mapping: FieldMapping,
    *,
    body: bytes,
    source: str,
    received_at: datetime,
    id_bucket_s: int,
    signed_at: int | None = None,
) -> dict[str, Any]:
    """The provider's payload in the Signal schema (unmapped keys are kept as they are);
    `signed_at`: the verified signature's time (unix seconds), if the request was signed."""
    taken: set[str] = set()
    signal: dict[str, Any] = {}
    for field, keys in mapping.fields.items():
        names = (keys,) if isinstance(keys, str) else keys
        present = [payload[key] for key in names if payload.get(key) not in (None, "")]
        taken.update(names)
        if not present:
            continue
        value: Any = present if not isinstance(keys, str) else present[0]
        table = mapping.values.get(field)
        if table is not None:
            text = str(value).strip()
            # Case folded for ASCII only: Unicode case mapping turns look-alikes into letters
            # ("\u212aill".lower() is "kill"); other text is looked up as it is.
            value = table.get(text.lower() if text.isascii() else text)
            if value is None:
                continue
        signal[field] = value
    for key, value in payload.items():
        if key not in taken and key not in signal:
            signal[key] = value
    if mapping.tradingview_ticker and isinstance(signal.get("symbol"), str):
        signal["symbol"] = bybit_symbol(signal["symbol"])
    if "id" not in signal:
        sent = signed_at if signed_at is not None else int(received_at.timestamp())
        bucket = sent // id_bucket_s
        digest = hashlib.sha256(body).hexdigest()[:24]
        signal["id"] = f"{source[:16]}:{digest}:{bucket}"
    signal.setdefault("ts", received_at.isoformat())
    return signal
