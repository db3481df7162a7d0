"""Collect a chapter's measured numbers, show them as a table beside the papers' numbers, and
write them as JSON for ``make results``.

Example::

    report("01", {
        "MADE, 32 masks: test NLL": {"value": 88.9, "unit": "nats", "paper": 88.04,
                                      "source": "Germain et al. 2015, Table 6"},
        "PixelCNN: train time": {"value": 212.0, "unit": "s"},
    })

In a notebook the returned :class:`Report` renders as an HTML table. When the environment
variable ``NBUTILS_REPORT_DIR`` is set (the headless runner sets it), the numbers are also
written to ``<dir>/report_<chapter>.json``.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from nbutils.runtime import machine, profile

REPORT_ENV = "NBUTILS_REPORT_DIR"
FIELDS = ("value", "unit", "paper", "source", "note")


def _entry(name: str, metric) -> dict:
    """Normalise a number or a dict into {"value", "unit", "paper", "source", "note"}."""
    if isinstance(metric, int | float | str):
        metric = {"value": metric}
    if not isinstance(metric, dict) or "value" not in metric:
        raise ValueError(
            f"metric {name!r} must be a number or a dict with a 'value', got {metric!r}"
        )
    unknown = set(metric) - set(FIELDS)
    if unknown:
        raise ValueError(f"metric {name!r} has unknown fields {sorted(unknown)}; allowed: {FIELDS}")
    entry = {key: metric.get(key) for key in FIELDS}
    value = entry["value"]
    if isinstance(value, float) and not math.isfinite(value):
        entry["value"] = None
    elif value is not None and not isinstance(value, int | float | str):
        entry["value"] = float(value)  # e.g. a 0-dim tensor or numpy scalar
    return entry


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


@dataclass
class Table:
    """A small table that a notebook shows as HTML (and as aligned text elsewhere).

    Example:
        >>> Table(["model", "NLL"], [["MADE", 88.04]])
        model  NLL
        MADE   88.04
    """

    header: list[str]
    rows: list[list]
    caption: str = ""

    def __post_init__(self):
        bad = [i for i, row in enumerate(self.rows) if len(row) != len(self.header)]
        if bad:
            raise ValueError(f"rows {bad} do not have {len(self.header)} cells like the header")

    def _cells(self) -> list[list[str]]:
        return [[_fmt(c) if not isinstance(c, str) else c for c in row] for row in self.rows]

    def __repr__(self) -> str:
        rows = [list(self.header), *self._cells()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(self.header))]
        lines = [self.caption] if self.caption else []
        lines += [
            "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
        ]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self.header)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
            for r in self._cells()
        )
        caption = f"<caption>{html.escape(self.caption)}</caption>" if self.caption else ""
        return f"<table>{caption}<tr>{head}</tr>{body}</table>"


@dataclass
class Report:
    """A chapter's metrics; renders as text or an HTML table."""

    chapter: str
    profile: str
    metrics: dict[str, dict]

    def rows(self) -> list[list[str]]:
        return [
            [
                name,
                _fmt(m["value"]),
                m["unit"] or "",
                _fmt(m["paper"]),
                m["source"] or "",
                m["note"] or "",
            ]
            for name, m in self.metrics.items()
        ]

    def table(self) -> Table:
        """The metrics as a :class:`Table` beside the papers' numbers."""
        header = ["metric", "ours", "unit", "paper", "source", "note"]
        caption = f"Chapter {self.chapter} results ({self.profile} profile)"
        return Table(header, self.rows(), caption=caption)

    def __repr__(self) -> str:
        return repr(self.table())

    def _repr_html_(self) -> str:
        return self.table()._repr_html_()

    def to_json(self) -> dict:
        return {
            "chapter": self.chapter,
            "profile": self.profile,
            "metrics": self.metrics,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
        }


def report(chapter: str, metrics: dict, *, out: str | os.PathLike | None = None) -> Report:
    """Build a chapter's :class:`Report`; write JSON to ``out`` or ``$NBUTILS_REPORT_DIR``.

    Args:
        chapter: two-digit chapter number, e.g. ``"01"``.
        metrics: name -> number, or name -> dict with "value" and optionally "unit", "paper"
            (the published number to compare with), "source" (where it is published) and "note".
    """
    if not (isinstance(chapter, str) and len(chapter) == 2 and chapter.isdigit()):
        raise ValueError(f"chapter must be two digits such as '01', got {chapter!r}")
    result = Report(chapter, profile(), {n: _entry(n, m) for n, m in metrics.items()})
    folder = out or os.environ.get(REPORT_ENV)
    if folder:
        path = Path(folder) / f"report_{chapter}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    return result
