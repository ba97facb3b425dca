"""Markdown cells, tables and goal rows: what every section of the report is made of."""

from typing import Any


def fmt(value: Any) -> str:
    """Render a cell: numbers rounded, None as n/a."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Render a Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c) for c in row) + " |" for row in rows]
    return [*lines, ""]


def goal(name: str, value: float | None, limit: float, higher_is_better: bool) -> list[Any]:
    """One row of the goals table."""
    if value is None:
        return [name, "n/a", limit, "not measured"]
    met = value >= limit if higher_is_better else value <= limit
    return [
        name,
        value,
        ("≥ " if higher_is_better else "≤ ") + str(limit),
        "met" if met else "NOT met",
    ]
