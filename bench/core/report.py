"""Result tables shared by every bench: rows with targets, rendered for the console and Markdown.

A row either states a figure, or compares it with a target (`met`), or is a
correctness check (`check`): a failed check makes the run fail, a missed
target is only reported.
"""

from __future__ import annotations

from dataclasses import dataclass

MARKDOWN_HEADER = "| Measurement | Value | Target | Result |"


@dataclass(frozen=True)
class Row:
    """One line of a table; `met` is None for figures without a target."""

    label: str
    value: str
    target: str = ""
    met: bool | None = None
    check: bool = False


Section = tuple[str, list[Row]]


def verdict(met: bool | None) -> str:
    """Met / MISSED / nothing."""
    return "" if met is None else ("met" if met else "MISSED")


def yes(flag: bool) -> str:
    """yes / no."""
    return "yes" if flag else "no"


def text_table(sections: list[Section], label_width: int = 46, value_width: int = 28) -> str:
    """The sections as aligned text for the console."""
    lines = []
    for title, rows in sections:
        lines += ["", f"== {title} =="]
        lines += [
            f"  {row.label:<{label_width}} {row.value:<{value_width}} {row.target:<27} "
            f"{verdict(row.met)}".rstrip()
            for row in rows
        ]
    return "\n".join(lines)


def markdown_table(sections: list[Section]) -> str:
    """The sections as Markdown, one table each under a bold title."""
    parts = []
    for title, rows in sections:
        parts += [f"**{title}**", "", MARKDOWN_HEADER, "|---|---|---|---|"]
        parts += [f"| {w.label} | {w.value} | {w.target} | {verdict(w.met)} |" for w in rows]
        parts.append("")
    return "\n".join(parts)


def failed_labels(sections: list[Section], check: bool) -> list[str]:
    """Labels of failed checks (check=True) or missed targets (check=False)."""
    rows = [row for _, rows in sections for row in rows]
    return [row.label for row in rows if row.met is False and row.check == check]


def summary(sections: list[Section]) -> str:
    """Targets met or missed, and any failed check, in a line or two."""
    missed, failed = failed_labels(sections, False), failed_labels(sections, True)
    lines = ["All targets met." if not missed else "Targets MISSED: " + "; ".join(missed)]
    if failed:
        lines.append("Checks FAILED: " + "; ".join(failed))
    return "\n".join(lines)
