"""Read DVC charts as a person sees them: each Vega-Lite spec rendered to SVG, titles and axes."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fmnist.tools import plots_page

CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_AXIS = re.compile(r"([XY])-axis titled '([^']*)'")
_TRANSLATE = re.compile(r"translate\(([-\d.]+),([-\d.]+)\)")
_PATH = re.compile(r"\.(csv|json|tsv|ya?ml|png)\b|\b(plots|metrics)/")


@dataclass(frozen=True)
class Axis:
    """One drawn axis: X or Y, its title, and its tick labels in drawing order."""

    orient: str
    title: str
    labels: list[str]


def titles(spec: Any) -> Iterator[str]:
    """Every title in a spec: the chart's and each panel's."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "title" and isinstance(value, str):
                yield value
            elif key == "title" and isinstance(value, dict) and "text" in value:
                yield value["text"]
            elif key not in ("data", "encoding"):
                yield from titles(value)
    elif isinstance(spec, list):
        for item in spec:
            yield from titles(item)


def axes(svg: str) -> list[Axis]:
    """The axes of a rendered chart, each with its labels ordered left to right, top to bottom."""
    found = []
    for group in ET.fromstring(svg).iter():
        match = _AXIS.match(group.get("aria-label", ""))
        if group.get("aria-roledescription") != "axis" or not match:
            continue
        orient, title = match.groups()
        texts = [
            text
            for g in group.iter()
            if "role-axis-label" in g.get("class", "")
            for text in g
            if text.text
        ]
        position = 0 if orient == "X" else 1
        texts.sort(key=lambda t: float(_TRANSLATE.search(t.get("transform")).group(1 + position)))
        found.append(Axis(orient, title, [t.text for t in texts]))
    return found


def render(content: dict) -> list[Axis]:
    """Render one chart to SVG and return its axes."""
    return axes(plots_page.render_svg(content))


def problems(name: str, content: dict) -> list[str]:
    """What would stop a person reading the chart at a glance; empty when there is nothing."""
    found = []
    chart_titles = list(titles(content))
    if not chart_titles or not chart_titles[0].strip():
        found.append(f"{name}: no title")
    found += [f"{name}: title {t!r} is a file path" for t in chart_titles if _PATH.search(t)]
    for axis in render(content):
        if not axis.title or axis.title in ("x", "y", "value", "step"):
            found.append(f"{name}: {axis.orient} axis titled {axis.title!r}")
        if "loss" in axis.title and "accuracy" in axis.title:
            found.append(f"{name}: loss and accuracy on one axis")
        if axis.title == "epoch" and not all(re.fullmatch(r"\d+", t) for t in axis.labels):
            found.append(f"{name}: epoch ticks {axis.labels}")
        if axis.title in ("actual", "predicted") and axis.labels != CLASSES:
            found.append(f"{name}: {axis.title} axis in the order {axis.labels}")
    return found
