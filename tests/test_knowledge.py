"""Knowledge: documents cut into passages with stable ids, BM25 per language,
rebuilt when a file changes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from leadloop.config import ConfigError, LoadedConfig
from leadloop.knowledge.catalog import CatalogError, load_catalog
from leadloop.knowledge.index import KnowledgeIndex
from leadloop.knowledge.passages import collect
from leadloop.knowledge.sources import Sources

PRICING = """# FleetTrack pricing

## Starter plan
Starter costs EUR 9 per vehicle per month and includes live tracking.

## Team plan
Team costs EUR 15 per vehicle per month and adds route planning.

## Team plan
Annual contracts get two months free.
"""
SECURITY_DE = """# Sicherheit

## Hosting
FleetTrack speichert alle Daten in Rechenzentren in Frankfurt am Main.
"""
FAQ_TXT = """Does FleetTrack work offline?
The driver app stores positions for 48 hours without signal.

Which trucks are supported?
Any vehicle with a 12 or 24 volt socket."""


def knowledge(tmp_path: Path) -> Path:
    root = tmp_path / "knowledge"
    (root / "de").mkdir(parents=True)
    (root / "pricing.md").write_text(PRICING)
    (root / "de" / "security.md").write_text(SECURITY_DE)
    (root / "faq.txt").write_text(FAQ_TXT)
    return root


def test_documents_become_passages_with_stable_ids(tmp_path: Path) -> None:
    passages = {p.id: p for p in collect([knowledge(tmp_path)], "en")}
    assert sorted(passages) == [
        "de/security.md#hosting",
        "faq.txt#1",
        "faq.txt#2",
        "pricing.md#starter-plan",
        "pricing.md#team-plan",
        "pricing.md#team-plan-2",
    ]
    team = passages["pricing.md#team-plan"]
    assert team.text.startswith("FleetTrack pricing: Team plan. Team costs EUR 15")
    assert passages["de/security.md#hosting"].language == "de"
    assert passages["faq.txt#1"].language == "en"


def test_search_finds_the_passage_in_the_buyers_language(tmp_path: Path) -> None:
    index = KnowledgeIndex([knowledge(tmp_path)])
    assert index.languages() == ["de", "en"]
    [best, *_] = index.search("how much does the team plan cost per vehicle?", "en")
    assert best.passage.id == "pricing.md#team-plan"
    [german] = index.search("Wo werden die Daten gespeichert?", "de")
    assert german.passage.id == "de/security.md#hosting"
    # Stems: "stored" finds "stores".
    assert index.search("are positions stored offline", "en")[0].passage.id == "faq.txt#1"
    # A language without documents falls back to the default one.
    assert index.search("team plan price", "fr")[0].passage.id.startswith("pricing.md")
    assert index.search("zebra giraffe", "en") == []


def test_a_changed_file_is_indexed_again(tmp_path: Path) -> None:
    root = knowledge(tmp_path)
    index = KnowledgeIndex([root])
    assert not index.refresh()
    path = root / "pricing.md"
    path.write_text(PRICING + "\n## Enterprise plan\nEnterprise includes an SAP connector.\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert index.refresh()
    assert index.search("SAP connector", "en")[0].passage.id == "pricing.md#enterprise-plan"


CATALOG = """
[[products]]
name = "FleetTrack Team"
sku = "ft-team"
description = "Live tracking and route planning."
price = 15
currency = "EUR"
unit = "per vehicle per month"
purchase_url = "https://acme.example/buy/team"
attributes = { tier = "team", fleet = "10-100" }

[[products]]
name = "FleetTrack"
sku = "ft-starter"
description = "Live tracking."
price = 9
currency = "EUR"
unit = "per vehicle per month"
purchase_url = "https://acme.example/buy/starter"
"""


def test_the_catalog_gives_names_prices_and_links(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG)
    catalog = load_catalog(path)
    team = catalog.by_sku("ft-team")
    assert team is not None and team.price_text == "EUR 15.00 per vehicle per month"
    assert [p.sku for p in catalog.mentioned("Is FleetTrack Team worth it?")] == [
        "ft-team",
        "ft-starter",
    ]
    assert catalog.urls() == {"https://acme.example/buy/team", "https://acme.example/buy/starter"}
    [passage, _] = catalog.passages()
    assert passage.id == "catalog:ft-team" and "EUR 15.00" in passage.text


def test_a_csv_catalog_reads_attribute_columns(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(
        "name,sku,description,price,currency,unit,purchase_url,attr_tier\n"
        "FleetTrack Team,ft-team,Tracking,15.50,EUR,per vehicle,https://acme.example/buy/team,team\n"
    )
    [team] = load_catalog(path).products
    assert (str(team.price), team.attributes) == ("15.50", {"tier": "team"})


def test_catalog_mistakes_name_the_product_and_field(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    broken = CATALOG.replace(
        'purchase_url = "https://acme.example/buy/team"', 'purchase_url = "http://x"'
    ).replace('price = 9\ncurrency = "EUR"', 'price = 9\ncurrency = "euro"')
    path.write_text(broken)
    with pytest.raises(CatalogError) as error:
        load_catalog(path)
    message = str(error.value)
    assert "product ft-team: purchase_url" in message and "https://" in message
    assert "product ft-starter: currency" in message


def test_sources_default_to_the_sample_company(
    make_config: Callable[[str], LoadedConfig], tmp_path: Path
) -> None:
    sources = Sources.from_config(make_config(""))
    assert sources.playbook.name == "playbook.toml" and sources.catalog.is_file()
    index = KnowledgeIndex(sources.documents)
    assert {"en", "de"} <= set(index.languages())
    root = knowledge(tmp_path)
    configured = Sources.from_config(make_config(f'[knowledge]\npaths = ["{root}"]\n'))
    assert configured.documents == [root]


def test_a_missing_knowledge_path_is_a_config_error(
    make_config: Callable[[str], LoadedConfig],
) -> None:
    with pytest.raises(ConfigError, match=r"line 3: knowledge.playbook: no such file"):
        make_config('[knowledge]\ncatalog = "catalog.toml"\nplaybook = "nope.toml"\n')
