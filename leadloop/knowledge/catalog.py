"""The product catalog: the only source of product names, prices and purchase
links in outbound mail (policy fills them into slots; no model writes them).

TOML (``[[products]]``) or CSV (a header row; ``attr_<name>`` columns are
search attributes).  Each product: ``name``, ``sku``, ``description``,
``price``, ``currency``, optional ``unit``, ``purchase_url`` (https) and up to
three ``attributes``.  A mistake names the product and the field.
"""

from __future__ import annotations

import csv
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leadloop.knowledge.passages import KnowledgePassage


class CatalogError(Exception):
    """The catalog cannot be used; every problem is listed."""


class Product(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    sku: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,60}$")
    description: str = ""
    price: Decimal = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    unit: str = ""
    purchase_url: str
    attributes: dict[str, str] = Field(default_factory=dict, max_length=3)

    @field_validator("purchase_url")
    @classmethod
    def _https(cls, value: str) -> str:
        if not value.startswith("https://") or " " in value:
            raise ValueError("must be an https:// URL")
        return value

    @property
    def price_text(self) -> str:
        """How mail writes the price: ``EUR 15.00 per vehicle per month``."""
        amount = f"{self.currency} {self.price:,.2f}"
        return f"{amount} {self.unit}".strip()

    def passage(self, language: str = "en") -> KnowledgePassage:
        attributes = "; ".join(f"{k}: {v}" for k, v in self.attributes.items())
        text = f"{self.name}: {self.description} Price: {self.price_text}."
        if attributes:
            text += f" ({attributes})"
        return KnowledgePassage(f"catalog:{self.sku}", text, self.name, "catalog", language, text)


@dataclass(frozen=True)
class Catalog:
    products: tuple[Product, ...]

    def by_sku(self, sku: str) -> Product | None:
        return next((p for p in self.products if p.sku == sku), None)

    def mentioned(self, text: str) -> list[Product]:
        """Products named in *text* (name or sku, case-insensitive), longest
        names first so "FleetTrack Pro" wins over "FleetTrack"."""
        lowered = text.lower()
        found = [
            p
            for p in sorted(self.products, key=lambda p: len(p.name), reverse=True)
            if p.name.lower() in lowered or p.sku.lower() in lowered
        ]
        return found

    def urls(self) -> set[str]:
        return {p.purchase_url for p in self.products}

    def passages(self, language: str = "en") -> list[KnowledgePassage]:
        return [p.passage(language) for p in self.products]


def load_catalog(path: Path) -> Catalog:
    try:
        if path.suffix.lower() == ".csv":
            rows = _csv_rows(path)
        else:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            rows = data.get("products", [])
            if not isinstance(rows, list):
                raise CatalogError(f"{path}: [[products]] must be a list of tables")
    except (OSError, tomllib.TOMLDecodeError, UnicodeError, csv.Error) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    products: list[Product] = []
    problems: list[str] = []
    for number, row in enumerate(rows, 1):
        try:
            products.append(Product.model_validate(row))
        except ValidationError as exc:
            label = (
                row.get("sku") or row.get("name") or f"#{number}"
                if isinstance(row, dict)
                else f"#{number}"
            )
            for err in exc.errors():
                field = ".".join(str(part) for part in err["loc"]) or "(product)"
                problems.append(f"{path}: product {label}: {field}: {err['msg']}")
    skus = [p.sku for p in products]
    problems.extend(
        f"{path}: sku {s} appears twice" for s in sorted({s for s in skus if skus.count(s) > 1})
    )
    if problems:
        raise CatalogError("\n".join(problems))
    return Catalog(tuple(products))


def _csv_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows: list[dict[str, Any]] = []
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {"attributes": {}}
            for key, value in raw.items():
                if key is None or value is None or value == "":
                    continue
                if key.startswith("attr_"):
                    row["attributes"][key.removeprefix("attr_")] = value
                else:
                    row[key] = value
            rows.append(row)
        return rows
