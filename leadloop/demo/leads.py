"""The demo's sample leads: twenty fictional people at fictional companies
(reserved ``.example`` domains) in ``leads.csv``, a ``leadloop leads
import`` file shipped as package data.  The personas are dealt to them in
file order (``personas.persona_for``)."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SELLERS = ("ann@acme.example", "cem@acme.example")
SUPERVISOR = "lena@acme.example"


@dataclass(frozen=True)
class SampleLead:
    """What the simulated buyer needs to know about itself."""

    email: str
    first_name: str
    last_name: str
    company: str

    @property
    def domain(self) -> str:
        return self.email.rsplit("@", 1)[1]

    @property
    def name(self) -> str:
        return f"{self.first_name} {self.last_name}"


def _text() -> str:
    return resources.files("leadloop.demo").joinpath("leads.csv").read_text(encoding="utf-8")


def _read() -> tuple[SampleLead, ...]:
    rows = csv.DictReader(io.StringIO(_text(), newline=""))
    return tuple(
        SampleLead(row["email"], row["first_name"], row["last_name"], row["company"])
        for row in rows
    )


SAMPLE_LEADS = _read()


def write_csv(count: int, path: Path) -> None:
    """The first *count* sample leads (with their accounts) as a ``leadloop
    leads import`` file."""
    header, *rows = _text().splitlines(keepends=True)
    path.write_text("".join([header, *rows[:count]]), encoding="utf-8")
