"""Leads and accounts from CSV files: upsert by email (leads) or domain
(accounts).  A bad row is rejected with its reason; it never aborts the file."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from leadloop.agent.controls import suppressed_among
from leadloop.agent.lifecycle import create_lead
from leadloop.storage.db import Database
from leadloop.storage.models import Account, Lead

LEAD_COLUMNS = (
    "email",
    "first_name",
    "last_name",
    "title",
    "company",
    "country",
    "timezone",
    "source",
    "rating",
    "consent",
    "hand_raiser",
    "owner",
)
ACCOUNT_COLUMNS = ("domain", "name", "industry", "size", "open_opportunity_value")
# Account columns as they appear in a leads file.
LEAD_ACCOUNT_COLUMNS = {
    "account_domain": "domain",
    "account_name": "name",
    "industry": "industry",
    "company_size": "size",
    "open_opportunity_value": "open_opportunity_value",
}
RATINGS = ("hot", "warm", "cold")
_TRUE = {"1", "true", "yes", "y", "granted", "opt-in", "opted-in"}
_FALSE = {"0", "false", "no", "n", "denied", "opt-out", "opted-out"}


async def lead_by_email(session: AsyncSession, address: str | None) -> Lead | None:
    """The lead with this address, if there is one."""
    if not address:
        return None
    lead: Lead | None = await session.scalar(select(Lead).where(Lead.email == address.lower()))
    return lead


class RowError(ValueError):
    """A row that cannot be imported; the message says why."""


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    suppressed: int = 0
    """New addresses not created: suppressed (an erased person's among them)."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    custom_columns: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "suppressed": self.suppressed,
            "rejected": [{"line": line, "reason": reason} for line, reason in self.rejected],
            "custom_columns": self.custom_columns,
        }


def normalize_email(value: str) -> str:
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise RowError(f"invalid email {value!r}: {exc}") from exc
    return checked.normalized.lower()


def normalize_domain(value: str) -> str:
    domain = value.strip().lower().rstrip(".")
    domain = domain.removeprefix("http://").removeprefix("https://").removeprefix("www.")
    domain = domain.split("/", 1)[0]
    try:
        validate_email(f"postmaster@{domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        raise RowError(f"invalid domain {value!r}") from exc
    return domain


def _flag(value: str, column: str) -> bool:
    text = value.strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise RowError(f"{column} must be yes or no, not {value!r}")


def _consent(value: str) -> str:
    text = value.strip().lower()
    if text in ("", "unknown"):
        return "unknown"
    return "granted" if _flag(text, "consent") else "denied"


def _account_fields(row: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for column in ("name", "industry"):
        if row.get(column):
            fields[column] = row[column].strip()
    if row.get("size"):
        try:
            size = int(row["size"].replace(",", "").strip())
        except ValueError as exc:
            raise RowError(f"size must be a whole number, not {row['size']!r}") from exc
        if size < 0:
            raise RowError("size cannot be negative")
        fields["size"] = size
    if row.get("open_opportunity_value"):
        try:
            value = Decimal(row["open_opportunity_value"].replace(",", "").strip())
        except InvalidOperation as exc:
            raise RowError(
                f"open_opportunity_value must be a number, not {row['open_opportunity_value']!r}"
            ) from exc
        if not value.is_finite() or value < 0:
            raise RowError("open_opportunity_value must be a number of zero or more")
        fields["open_opportunity_value"] = value
    return fields


def _lead_fields(row: dict[str, str]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for column in ("first_name", "last_name", "title", "company", "country", "source"):
        if row.get(column):
            fields[column] = row[column].strip()
    if row.get("timezone"):
        name = row["timezone"].strip()
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise RowError(f"unknown time zone {name!r}") from exc
        fields["timezone"] = name
    if row.get("rating"):
        rating = row["rating"].strip().lower()
        if rating not in RATINGS:
            raise RowError(f"rating must be one of {', '.join(RATINGS)}, not {row['rating']!r}")
        fields["rating"] = rating
    if row.get("consent"):
        fields["consent"] = _consent(row["consent"])
    if row.get("hand_raiser"):
        fields["hand_raiser"] = _flag(row["hand_raiser"], "hand_raiser")
    if row.get("owner"):
        fields["owner"] = normalize_email(row["owner"])
    return fields


def _read_rows(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig", errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows = []
    for row in reader:
        clean = {k: (v or "") for k, v in row.items() if k is not None}
        if None in row:
            clean["__extra__"] = "x"
        rows.append((reader.line_num, clean))
    return header, rows


def _apply(obj: Any, fields: dict[str, Any]) -> bool:
    changed = False
    for key, value in fields.items():
        if getattr(obj, key) != value:
            setattr(obj, key, value)
            changed = True
    return changed


async def _upsert_account(
    session: AsyncSession, domain: str, fields: dict[str, Any], now: datetime
) -> tuple[Account, str]:
    account = await session.scalar(select(Account).where(Account.domain == domain))
    if account is None:
        account = Account(domain=domain, custom={}, created_at=now, updated_at=now, **fields)
        session.add(account)
        await session.flush()
        return account, "created"
    if _apply(account, fields):
        account.updated_at = now
        return account, "updated"
    return account, "unchanged"


async def import_accounts(
    db: Database,
    path: Path,
    now: datetime,
    progress: Callable[[Iterable[Any]], Iterable[Any]] = iter,
) -> ImportReport:
    header, rows = _read_rows(path)
    report = ImportReport()
    if "domain" not in header:
        report.rejected.append((1, "the file has no 'domain' column"))
        return report
    report.custom_columns = [c for c in header if c not in ACCOUNT_COLUMNS]
    for line, row in progress(rows):
        try:
            if "__extra__" in row:
                raise RowError("more fields than the header has columns")
            domain = normalize_domain(row.get("domain", ""))
            fields = _account_fields(row)
            custom = {c: row[c] for c in report.custom_columns if row.get(c)}
            async with db.transaction() as session:
                account, outcome = await _upsert_account(session, domain, fields, now)
                if custom and {**account.custom, **custom} != account.custom:
                    account.custom = {**account.custom, **custom}
                    outcome = "updated" if outcome == "unchanged" else outcome
        except RowError as exc:
            report.rejected.append((line, str(exc)))
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report


async def import_leads(
    db: Database,
    path: Path,
    now: datetime,
    *,
    actor: str = "import",
    progress: Callable[[Iterable[Any]], Iterable[Any]] = iter,
) -> ImportReport:
    header, rows = _read_rows(path)
    report = ImportReport()
    if "email" not in header:
        report.rejected.append((1, "the file has no 'email' column"))
        return report
    known = set(LEAD_COLUMNS) | set(LEAD_ACCOUNT_COLUMNS)
    report.custom_columns = [c for c in header if c not in known]
    for line, row in progress(rows):
        try:
            outcome = await _import_lead_row(db, row, report.custom_columns, now, actor, path)
        except RowError as exc:
            report.rejected.append((line, str(exc)))
            continue
        setattr(report, outcome, getattr(report, outcome) + 1)
    return report


async def _import_lead_row(
    db: Database,
    row: dict[str, str],
    custom_columns: list[str],
    now: datetime,
    actor: str,
    path: Path,
) -> str:
    if "__extra__" in row:
        raise RowError("more fields than the header has columns")
    if not row.get("email", "").strip():
        raise RowError("email is empty")
    email = normalize_email(row["email"])
    fields = _lead_fields(row)
    account_row = {target: row.get(source, "") for source, target in LEAD_ACCOUNT_COLUMNS.items()}
    account_fields = _account_fields(account_row)
    account_domain = normalize_domain(account_row["domain"]) if account_row["domain"] else None
    if account_fields and account_domain is None:
        raise RowError("account columns given without account_domain")
    custom = {c: row[c].strip() for c in custom_columns if row.get(c, "").strip()}
    async with db.transaction() as session:
        account = None
        if account_domain:
            account, _ = await _upsert_account(session, account_domain, account_fields, now)
        else:
            account = await session.scalar(
                select(Account).where(Account.domain == email.rsplit("@", 1)[1])
            )
        if account is not None:
            fields["account_id"] = account.id
        lead = await session.scalar(select(Lead).where(Lead.email == email))
        if lead is None and await suppressed_among(session, [email]):
            # Never mailed, so never created: a lead here would bring back
            # the data an erasure removed (README, "Admin controls").
            return "suppressed"
        if lead is None:
            lead = Lead(email=email, custom=custom, **fields)
            await create_lead(
                session, lead, actor=actor, reason=f"imported from {path.name}", now=now
            )
            return "created"
        changed = _apply(lead, fields)
        if custom and {**lead.custom, **custom} != lead.custom:
            lead.custom = {**lead.custom, **custom}
            changed = True
        if changed:
            lead.updated_at = now
            return "updated"
        return "unchanged"
