"""How the suite prints its figures: aligned tables, and targets judged PASS or MISS."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


def table(title: str, header: list[str], rows: list[list[str]], notes: Sequence[str] = ()) -> None:
    """The first column left-aligned, the others right-aligned; `notes` under it."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first, *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    print()
    print(title)
    print(line(header))
    print("-" * len(line(header)))
    for r in rows:
        print(line(r))
    for note in notes:
        print(note)


def ms(value: float) -> str:
    return f"{value:.1f}"


def times(value: float, base: float) -> str:
    """A ratio of `value` to the baseline `base`: 0.75x."""
    return f"{value / base:.2f}x"


_FORMATS = {"x": "{:.2f}x", "ms": "{:.1f} ms", "/s": "{:.1f}/s", "MB": "{:.1f} MB", "": "{:.0f}"}


@dataclass(frozen=True)
class Target:
    """One target of the issue: `measured` against `limit` (an upper bound unless `at_least`)."""

    name: str
    measured: float | None  # None: not measured in this run
    limit: float
    unit: str  # a key of _FORMATS
    at_least: bool = False

    def _fmt(self, value: float) -> str:
        return _FORMATS[self.unit].format(value)

    def row(self) -> list[str]:
        bound = ("≥ " if self.at_least else "≤ ") + self._fmt(self.limit)
        if self.measured is None:
            return [self.name, "n/a", bound, "n/a", "not measured"]
        slack = self.measured - self.limit if self.at_least else self.limit - self.measured
        verdict = "PASS" if slack >= 0 else "MISS"
        by = f"by {self._fmt(abs(slack))}"
        if self.limit:
            side = ("over" if self.measured > self.limit else "under") if slack else "at"
            by += f" ({abs(slack) / self.limit:.0%} {side} the limit)"
        return [self.name, self._fmt(self.measured), bound, verdict, by]


def targets(rows: list[Target], notes: Sequence[str] = ()) -> None:
    header = ["target", "measured", "limit", "verdict", "margin"]
    table("targets", header, [t.row() for t in rows], notes)
