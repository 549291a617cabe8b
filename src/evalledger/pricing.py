"""Cost from usage. The price table is data (``prices.toml`` beside this file), dated and overridable."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalledger.errors import UsageError

DEFAULT_PRICES = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True)
class Price:
    """USD per 1M input and output tokens; ``batch``: the provider's batch-API price, when listed."""

    input: float
    output: float
    batch: "Price | None" = None

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1e6


@dataclass(frozen=True)
class PriceTable:
    """Prices by provider prefix and API model name, with the date they were checked."""

    prices: dict[str, dict[str, Price]]
    checked: str | None = None
    source: str = str(DEFAULT_PRICES)

    def lookup(self, model: str) -> Price | None:
        """The price for ``provider/model``: exact name, else the longest listed prefix, else None.

        Self-hosted servers (vllm/, ollama/, a bare name with --base-url) have no table entry: unknown.
        """
        prefix, _, name = model.partition("/")
        table = self.prices.get(prefix, {})
        if name in table:
            return table[name]
        best = max((k for k in table if name.startswith(k + "-") or name.startswith(k + ".")), key=len, default=None)
        return table[best] if best else None


def load_prices(path: str | Path | None = None) -> PriceTable:
    """Read a price table (the shipped one by default). Errors name the file and entry."""
    p = Path(path) if path else DEFAULT_PRICES
    try:
        data: dict[str, Any] = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--prices {p}: file not found") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"--prices {p}: not valid TOML ({e})") from None
    prices: dict[str, dict[str, Price]] = {}
    for provider, models in data.items():
        if not isinstance(models, dict):
            continue  # top-level keys such as `checked`
        for name, entry in models.items():
            try:
                batch = None
                if "batch_input" in entry or "batch_output" in entry:
                    batch = Price(float(entry["batch_input"]), float(entry["batch_output"]))
                prices.setdefault(provider, {})[name] = Price(float(entry["input"]), float(entry["output"]), batch)
            except (KeyError, TypeError, ValueError):
                raise UsageError(f"--prices {p}: [{provider}] \"{name}\" needs numeric input and output prices "
                                 "(and, if it lists one, both batch_input and batch_output)") from None
    return PriceTable(prices, checked=data.get("checked"), source=str(p))


def price_for(model: str, *, prices_file: str | Path | None = None, price_input: float | None = None,
              price_output: float | None = None, batch: bool = False) -> Price | None:
    """The price to use for a run: explicit flags win (with ``batch``, they are what the batch is
    billed), then the table (shipped or ``--prices``); with ``batch``, the table's batch price
    (None, unknown, when the entry lists none)."""
    if (price_input is None) != (price_output is None):
        raise UsageError("--price-input and --price-output go together (USD per 1M tokens)")
    if price_input is not None and price_output is not None:
        if price_input < 0 or price_output < 0:
            raise UsageError("--price-input/--price-output must not be negative")
        return Price(price_input, price_output)
    price = load_prices(prices_file).lookup(model)
    if batch and price is not None:
        return price.batch
    return price
