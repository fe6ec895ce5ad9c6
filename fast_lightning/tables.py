"""The one table renderer: a header and rows of cell strings -> a markdown table or aligned plain text.
Callers format their own cells (metrics, counts, trial values); only the layout lives here. Pure python, so
every layer (data check, evaluation reports, commands) can use it."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["markdown_table", "text_table"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """GitHub markdown; a '|' inside a body cell is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "<",
               min_widths: Sequence[int] = (), gap: str = "  ", rule: str | None = "columns") -> str:
    """Fixed-width columns, each as wide as its widest cell (at least ``min_widths[i]``).

    ``align``: one character per column, ``<`` left or ``>`` right (a shorter string repeats its last
    character); ``rule``: ``columns`` (dashes under each column), ``full`` (one line as wide as the header)
    or None (no rule). Trailing spaces are stripped from every line.
    """
    n = len(header)
    aligns = [align[min(i, len(align) - 1)] for i in range(n)]
    mins = list(min_widths) + [0] * (n - len(min_widths))
    widths = [max(mins[i], len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(n)]

    def line(cells) -> str:
        return gap.join(str(c).ljust(w) if a == "<" else str(c).rjust(w)
                        for c, w, a in zip(cells, widths, aligns)).rstrip()

    lines = [line(header)]
    if rule == "columns":
        lines.append(line(["-" * w for w in widths]))
    elif rule == "full":
        lines.append("-" * len(lines[0]))
    lines += [line(r) for r in rows]
    return "\n".join(lines)
