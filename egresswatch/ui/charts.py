"""SVG charts of a server's traffic (pygal: the only module that imports it).

pygal draws on the server, in Python, so the browser loads no chart library;
``js=[]`` removes the tooltip script pygal would otherwise reference from the
network. Labels (destination names from packets) are set as XML text by
pygal's ElementTree writer, which escapes them; the SVG is shown through an
``<img>``, where no script runs in any case.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pygal
from pygal.style import Style

from egresswatch.textsafe import safe

_STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#333",
    foreground_strong="#111",
    foreground_subtle="#999",
    colors=("#2e7d32", "#c62828", "#9e9e9e", "#1565c0", "#6a1b9a", "#ef6c00", "#00838f", "#5d4037"),
    font_family="sans-serif",
)
_COMMON: dict[str, Any] = dict(
    js=[], style=_STYLE, disable_xml_declaration=True, x_label_rotation=30, show_minor_x_labels=False,
    legend_at_bottom=True, legend_at_bottom_columns=3, truncate_legend=60, margin=8,
)  # fmt: skip
VERDICT_ORDER = ("allowed", "flagged", "unwatched")


def _svg(chart: Any) -> bytes:
    out = chart.render()
    return out.encode() if isinstance(out, str) else bytes(out)


def _labels(tl: dict[str, Any]) -> list[str]:
    span = tl["width"] * tl["buckets"]
    fmt = "%H:%M:%S" if span < 3600 else "%H:%M" if span <= 2 * 86400 else "%m-%d %H:%M"
    return [
        datetime.fromtimestamp(tl["start"] + i * tl["width"]).astimezone().strftime(fmt)
        for i in range(tl["buckets"])
    ]


def _major(labels: list[str], every: int = 6) -> list[str]:
    return labels[::every]


def verdicts_svg(tl: dict[str, Any]) -> bytes:
    """Stacked bars per time bucket: allowed vs flagged events."""
    opts = {**_COMMON, "legend_at_bottom": False}
    chart = pygal.StackedBar(height=300, width=900, title="events per interval: allowed vs flagged", **opts)
    labels = _labels(tl)
    chart.x_labels = labels
    chart.x_labels_major = _major(labels)
    for verdict in VERDICT_ORDER:
        if verdict in tl["verdicts"]:
            chart.add(verdict, [v or None for v in tl["verdicts"][verdict]])
    return _svg(chart)


def destinations_svg(tl: dict[str, Any]) -> bytes:
    """One row per destination (the most contacted), a dot per interval sized by
    the events in it; destinations with flagged events are marked."""
    rows = tl["destinations"]
    chart = pygal.Dot(
        height=max(160, 60 + 34 * len(rows)), width=900, show_legend=False,
        title="destinations over time (! = flagged)", **_COMMON,
    )  # fmt: skip
    labels = _labels(tl)
    chart.x_labels = labels
    chart.x_labels_major = _major(labels)
    for dest, flagged, counts in rows:
        name = safe(dest)
        if len(name) > 48:
            name = name[:47] + "~"
        chart.add(("! " if flagged else "") + name, [c or None for c in counts])
    return _svg(chart)
