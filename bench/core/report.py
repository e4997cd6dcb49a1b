"""What a run reports: tables of figures, targets and checks, for the console and the README."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.config import DatabaseConfig
from bench.core.database import SeedReport
from bench.core.machine import Machine

NOT_MEASURED = "not measured"
MARKDOWN_HEADER = ("| Measurement | Value | Target | Result |", "|---|---|---|---|")
# A generated region of the README; a full run rewrites its own, the prose around is by hand.
_REGION = re.compile(
    r"<!-- bench:(?P<name>[\w:]+):begin -->\n(?P<body>.*?)\n<!-- bench:(?P=name):end -->",
    re.DOTALL,
)


@dataclass(frozen=True)
class Row:
    """One line of a table: a figure, a figure against a target (`met`), or a correctness
    check (`check`). A failed check fails the run; a missed target is only reported."""

    label: str
    value: str
    target: str = ""
    met: bool | None = None
    check: bool = False


Section = tuple[str, list[Row]]


def verdict(met: bool | None) -> str:
    """met / MISSED / nothing."""
    return "" if met is None else ("met" if met else "MISSED")


def yes(flag: bool) -> str:
    """yes / no."""
    return "yes" if flag else "no"


def data_lines(cfg: DatabaseConfig, machine: Machine, seeding: SeedReport) -> list[str]:
    """The machine, and the data the run measured on."""
    data = f"{cfg.tasks:,} tasks, {cfg.projects:,} projects, {cfg.workers:,} workers"
    return [*machine.lines(), f"Data: {data}; seeding {seeding.describe()}"]


@dataclass(frozen=True)
class Report:
    """Everything a run prints at the end and writes to its README region."""

    title: str
    smoke: bool
    setup: list[str]
    sections: list[Section]
    appendix_title: str = ""  # none when empty
    appendix: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # said after the verdict

    def rows(self) -> list[Row]:
        """Every row of every section."""
        return [row for _, rows in self.sections for row in rows]

    def failed(self, check: bool) -> list[str]:
        """Labels of failed checks (check=True) or missed targets (check=False)."""
        return [row.label for row in self.rows() if row.met is False and row.check == check]

    def verdict(self) -> str:
        """Targets met or missed, failed checks, targets this run could not judge, notes."""
        missed, failed = self.failed(check=False), self.failed(check=True)
        unjudged = [row.label for row in self.rows() if row.value == NOT_MEASURED]
        parts = ["No measured target missed." if unjudged else "All targets met."]
        if missed:
            parts = ["Targets MISSED: " + "; ".join(missed) + "."]
        if failed:
            parts.append("Checks FAILED: " + "; ".join(failed) + ".")
        if unjudged:
            parts.append("Not measured in this run: " + "; ".join(unjudged) + ".")
        return " ".join([*parts, *self.notes])

    def text(self) -> str:
        """The report for the console."""
        smoke = " (smoke run: checks that it works; the figures mean little)" if self.smoke else ""
        width = max((len(row.label) for row in self.rows()), default=0)
        lines = [self.title + smoke, *self.setup]
        for title, rows in self.sections:
            lines += ["", f"== {title} =="]
            for r in rows:
                line = f"  {r.label:<{width}}  {r.value:<40} {r.target:<20} {verdict(r.met)}"
                lines.append(line.rstrip())
        if self.appendix_title:
            lines += ["", f"== {self.appendix_title} ==", *self.appendix]
        return "\n".join([*lines, "", self.verdict()])

    def markdown(self) -> str:
        """The "Latest results" part of the bench's README section."""
        parts = ["### Latest results", "", *(f"- {line}" for line in self.setup), ""]
        for title, rows in self.sections:
            parts += [f"**{title}**", "", *MARKDOWN_HEADER]
            parts += [f"| {r.label} | {r.value} | {r.target} | {verdict(r.met)} |" for r in rows]
            parts.append("")
        parts.append(self.verdict())
        if self.appendix_title:
            parts += ["", f"#### {self.appendix_title}", "", "```text", *self.appendix, "```"]
        return "\n".join(parts)


def _wrap(name: str, body: str) -> str:
    return f"<!-- bench:{name}:begin -->\n{body.strip()}\n<!-- bench:{name}:end -->"


def read_regions(text: str) -> dict[str, str]:
    """The body of every generated region of a README, by name."""
    return {match["name"]: match["body"] for match in _REGION.finditer(text)}


def write_regions(path: Path, bodies: Mapping[str, str]) -> None:
    """Replace the named regions' bodies and keep everything else; a region the file lacks
    is appended."""
    text = path.read_text() if path.exists() else ""
    found = read_regions(text)
    text = _REGION.sub(lambda m: _wrap(m["name"], bodies.get(m["name"], m["body"])), text)
    for name in (name for name in bodies if name not in found):
        text += ("\n" if text else "") + _wrap(name, bodies[name]) + "\n"
    path.write_text(text)
