"""Display functions shared by the dock widgets: numbers for people, tables that fit the
dock, labels that wrap."""

import math

import numpy as np


def fmt(v, digits: int = 3) -> str:
    """A number as people read it: integers without decimals, other numbers with at most
    ``digits`` decimals (trailing zeros dropped), never in scientific notation."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if math.isnan(f):
            return "–"
        if f.is_integer() and abs(f) < 1e12:
            return str(int(f))
        s = f"{f:.{digits}f}".rstrip("0").rstrip(".")
        return "0" if s in ("-0", "") else s
    return str(v)


def signed(v, digits: int = 2) -> str:
    """A signed score: '+0.04', '-0.12'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{float(v):+.{digits}f}"


def show_table(table, columns: dict, row_headers=None) -> None:
    """Fill a magicgui Table with ``columns`` (name -> list of already formatted values) so
    it fits the dock: no pandas row numbers (``row_headers`` instead, or none), columns
    stretched to the dock's width, no horizontal scroll bar."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QHeaderView, QStyledItemDelegate

    n = len(next(iter(columns.values()), []))
    # all three keys: magicgui reads a dict without "index" as a dict of columns
    value = {
        "data": [[columns[c][i] for c in columns] for i in range(n)],
        "columns": list(columns),
        "index": list(row_headers) if row_headers is not None else [str(i + 1) for i in range(n)],
    }
    table.value = value
    q = table.native
    if not getattr(q, "_plain_text_cells", False):
        # magicgui's delegate re-formats number-like text ('0.06' -> '6.000e-02'); show ours as is
        q.setItemDelegate(QStyledItemDelegate(q))
        q._plain_text_cells = True
    q.verticalHeader().setVisible(row_headers is not None)
    header = q.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setStretchLastSection(True)
    header.setMinimumSectionSize(30)
    q.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    q.setWordWrap(True)
    q.setTextElideMode(Qt.TextElideMode.ElideNone)
    if len(columns) > 1:  # the last column takes the rest of the width; the others fit their text
        header.setSectionResizeMode(len(columns) - 1, QHeaderView.ResizeMode.Stretch)
    q.resizeRowsToContents()
    rows_h = sum(q.rowHeight(i) for i in range(n)) + header.height() + 4
    q.setMinimumHeight(min(rows_h, 320))


def wrap(label, text: str = None):
    """Make a magicgui Label wrap its text (long explanations stay inside the dock)."""
    label.native.setWordWrap(True)
    if text is not None:
        label.value = text
    return label
