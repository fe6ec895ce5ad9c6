"""`make sheet`: the rows option (the command end to end: tests/test_entry_points.py::test_sheet)."""

from __future__ import annotations

import pytest


def test_parse_rows_reads_labels_and_typed_values():
    from fast_lightning.errors import UserError
    from fast_lightning.commands.sheet import DEFAULT_ROWS, parse_rows

    assert parse_rows("a:farm_min_t=0,steps=5;b: farm_min_t=2") == [("a", {"farm_min_t": 0, "steps": 5}),
                                                                   ("b", {"farm_min_t": 2})]
    assert [over for _, over in parse_rows(DEFAULT_ROWS)] == [{"farm_min_t": 0}, {"farm_min_t": 2}]
    for bad in ("no-colon", ";;", ":farm_min_t=0"):
        with pytest.raises(UserError, match="rows"):
            parse_rows(bad)
