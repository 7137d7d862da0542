"""Render DVC's plots into one HTML page that needs no network, for viewing offline.

`dvc plots show` writes a page that loads Vega from a CDN. This module takes the same plots
from `dvc plots show --json` (or `dvc plots diff --json REV...`), renders each Vega-Lite spec to
SVG with vl-convert, and embeds the SVGs and DVC's PNG plots in a single self-contained page.

    fmnist-plots              # the workspace, into dvc_plots/index.html
    fmnist-plots main         # workspace against main, like `dvc plots diff`
    fmnist-plots --png docs/charts   # also each chart as a PNG, for a README
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from fmnist.experiments.dvc_command import run_dvc
from fmnist.pipeline.atomic import atomic_open, write_text
from fmnist.pipeline.cli import command_parser, entry_point
from fmnist.pipeline.errors import PipelineError

DEFAULT_OUT = Path("dvc_plots")
PAGE = "index.html"
MISSING = "vl-convert-python is not installed: run `pip install -e '.[plots]'` to render plots"

STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
section { display: inline-block; vertical-align: top; margin: 0 2em 2em 0; }
h2 { font-size: 1em; }
figure { display: inline-block; margin: 0 1em 1em 0; }
figure img { max-width: 100%; }
figcaption { text-align: center; font-family: monospace; }
.errors { color: #b00; }
"""


def vl_convert() -> ModuleType:
    """Import vl-convert, an optional dependency, or say how to install it."""
    try:
        import vl_convert
    except ImportError:
        raise PipelineError(MISSING) from None
    return vl_convert


def plots_json(revs: Sequence[str], out_dir: Path) -> dict[str, Any]:
    """Run `dvc plots show/diff --json`; DVC also copies the PNG plots into `out_dir`."""
    command = "diff" if revs else "show"
    return json.loads(run_dvc("plots", command, *revs, "--json", "-o", str(out_dir)))


def _vegalite_version(spec: dict[str, Any], known: Sequence[str]) -> str | None:
    # DVC's templates are written for Vega-Lite 5; vl-convert defaults to its newest major.
    match = re.search(r"/v(\d+)(?:\.\d+)*\.json$", spec.get("$schema", ""))
    if not match:
        return None
    same_major = [v for v in known if v.split(".")[0] == match.group(1)]
    return max(same_major, key=lambda v: tuple(map(int, v.split(".")))) if same_major else None


def render_svg(spec: dict[str, Any]) -> str:
    """Render one Vega-Lite spec, data included, to SVG."""
    vlc = vl_convert()
    version = _vegalite_version(spec, vlc.get_vegalite_versions())
    return vlc.vegalite_to_svg(spec, vl_version=version)


def render_png(spec: dict[str, Any], scale: float = 1.0) -> bytes:
    """Render one Vega-Lite spec, data included, to PNG."""
    vlc = vl_convert()
    version = _vegalite_version(spec, vlc.get_vegalite_versions())
    return vlc.vegalite_to_png(spec, vl_version=version, scale=scale)


def _data_uri(kind: str, content: bytes) -> str:
    return f"data:{kind};base64,{base64.b64encode(content).decode('ascii')}"


def _figure(source: str, caption: str) -> str:
    return (
        f'<figure><img src="{source}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def revisions(plots: dict[str, Any]) -> list[str]:
    """Return the revisions the plots show, in the order DVC lists them."""
    seen: dict[str, None] = {}
    for entries in plots.get("data", {}).values():
        for entry in entries:
            seen.update(dict.fromkeys(entry.get("revisions", [])))
    return list(seen)


# What each PNG the pipeline draws shows, by the end of its file name.
IMAGE_TITLES = {
    "_confusion": "{model}: confusion matrix",
    "_predictions": "{model}: predictions on random test images",
    "samples": "Random training images",
    "accuracy": "Test accuracy by model (as compare draws it)",
}


def section_title(name: str, entries: list[dict[str, Any]]) -> str:
    """A plot's heading: its chart's own title, or what its image shows; never a file path."""
    for entry in entries:
        title = entry.get("content", {}).get("title") if entry["type"] == "vega" else None
        title = title.get("text") if isinstance(title, dict) else title
        if isinstance(title, str) and title:
            return title
    stem = Path(name).stem
    for ending, title in IMAGE_TITLES.items():
        if stem.endswith(ending):
            return title.format(model=stem.removesuffix(ending))
    return stem.replace("_", " ")


def _section(name: str, entries: list[dict[str, Any]]) -> str:
    figures = []
    for entry in entries:
        caption = ", ".join(entry.get("revisions", []))
        if entry["type"] == "vega":
            # An <img> per SVG, not inline <svg>: Vega names clip paths clip1, clip2... in
            # every chart, and inline SVGs on one page would share those ids.
            svg = render_svg(entry["content"]).encode()
            figures.append(_figure(_data_uri("image/svg+xml", svg), caption))
        elif entry["type"] == "image":
            png = Path(entry["url"]).read_bytes()
            figures.append(_figure(_data_uri("image/png", png), caption))
        else:
            raise PipelineError(f"{name}: unknown plot type {entry['type']!r}")
    anchor = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    title = html.escape(section_title(name, entries))
    return f'<section id="{anchor}"><h2>{title}</h2>{"".join(figures)}</section>'


def render_page(plots: dict[str, Any]) -> str:
    """Return a self-contained HTML page of every plot in `dvc plots show --json` output."""
    shown = revisions(plots)
    title = "DVC plots: " + ", ".join(shown) if shown else "DVC plots"
    sections = [_section(name, entries) for name, entries in plots.get("data", {}).items()]
    body = "\n".join(sections) if sections else "<p>No plots.</p>"
    if plots.get("errors"):
        errors = html.escape(json.dumps(plots["errors"], indent=2))
        body = f'<pre class="errors">{errors}</pre>\n{body}'
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def png_name(name: str) -> str:
    """A file name for a chart's PNG, from its plot id (a path or a title)."""
    stem = name.removeprefix("plots/").rsplit(".", 1)[0] if "/" in name else name
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_").lower() + ".png"


def write_pngs(plots: dict[str, Any], out_dir: Path, scale: float = 2.0) -> list[Path]:
    """Render every chart of `plots` (the first revision's entry) to a PNG in `out_dir`."""
    written = []
    for name, entries in plots.get("data", {}).items():
        if entries and entries[0]["type"] == "vega":
            path = Path(out_dir) / png_name(name)
            with atomic_open(path, "wb") as handle:
                handle.write(render_png(entries[0]["content"], scale=scale))
            written.append(path)
    return written


def write_page(plots: dict[str, Any], out_dir: Path) -> Path:
    """Render `plots` and write the page into `out_dir`; return its path."""
    page = Path(out_dir) / PAGE
    write_text(page, render_page(plots))
    return page


@entry_point
def main(argv: Sequence[str] | None = None) -> None:
    """Write the offline page for the workspace, or for the given revisions."""
    parser = command_parser(__doc__, prog="fmnist-plots")
    parser.add_argument("revisions", nargs="*", help="revisions to compare, as `dvc plots diff`")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the page")
    parser.add_argument(
        "--json", type=Path, help="read this `dvc plots show --json` output instead of running DVC"
    )
    parser.add_argument("--png", type=Path, help="also write each chart as a PNG in this folder")
    args = parser.parse_args(argv)
    vl_convert()  # fail before running DVC when the renderer is missing
    plots = json.loads(args.json.read_text()) if args.json else plots_json(args.revisions, args.out)
    print(write_page(plots, args.out))
    if args.png:
        for path in write_pngs(plots, args.png):
            print(path)


if __name__ == "__main__":
    main()
