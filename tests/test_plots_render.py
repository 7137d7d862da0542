"""Every plot dvc.yaml declares renders to a real picture, and the offline page holds them all."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from PIL import Image

from fmnist import render_plots

from .conftest import ROOT
from .workflow_repo import MODELS, committed_repo, copy_repo, dvc, run

CLASSES = {
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
}  # fmt: skip
# DVC's colour for the first revision: the lines and bars of the workspace's data.
REV_COLOUR = (0x94, 0x5D, 0xD6)
IMAGES = [f"plots/images/{m}_{kind}.png" for m in MODELS for kind in ("confusion", "predictions")]
IMAGES += ["plots/comparison/accuracy.png", "plots/data/samples.png"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_data) -> Path:
    """A copy of the committed tiny-data repository."""
    base = committed_repo(tmp_path_factory, tiny_data)
    return copy_repo(base, tmp_path_factory.mktemp("plots") / "repo")


@pytest.fixture(scope="module")
def plots(repo) -> dict:
    """`dvc plots show --json`'s plots, by name."""
    shown = json.loads(dvc("plots", "show", "--json", cwd=repo))
    assert not shown.get("errors")
    return shown["data"]


def spec(plots: dict, name: str) -> dict:
    (entry,) = plots[name]
    assert entry["type"] == "vega" and entry["revisions"] == ["workspace"]
    return entry["content"]


def rgb(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return image.convert("RGB")


def assert_drawn(image: Image.Image, min_size: int = 100) -> None:
    """The image is large enough, and much of it differs from its background colour."""
    assert image.width >= min_size and image.height >= min_size
    colours = image.getcolors(maxcolors=image.width * image.height)
    background = max(colours)[1]
    drawn = sum(count for count, colour in colours if colour != background)
    assert len(colours) > 2
    assert drawn / (image.width * image.height) > 0.05


def pixels_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 12) -> int:
    return sum(
        count
        for count, pixel in image.getcolors(maxcolors=image.width * image.height)
        if all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))
    )


def declared(repo: Path) -> set[str]:
    """The files behind dvc.yaml's top-level plots, folders expanded."""
    names = set()
    for plot in yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]:
        path = next(iter(plot)) if isinstance(plot, dict) else plot
        folder = repo / path
        files = sorted(folder.iterdir()) if folder.is_dir() else [folder]
        names |= {f.relative_to(repo).as_posix() for f in files}
    return names


def test_every_declared_plot_is_shown_and_covered_here(plots, repo):
    covered = {f"plots/{kind}/{m}.csv" for m in MODELS for kind in ("train", "confusion")}
    covered |= {"plots/comparison/accuracy.csv", *IMAGES}
    assert set(plots) == declared(repo) == covered


@pytest.mark.parametrize("model", MODELS)
def test_training_curves_render(plots, repo, model):
    content = spec(plots, f"plots/train/{model}.csv")
    rows = content["data"]["values"]
    epochs = len((repo / f"plots/train/{model}.csv").read_text().splitlines()) - 1
    fields = {"train_loss", "test_loss", "train_accuracy", "test_accuracy"}
    assert {row["field"] for row in rows} == fields
    assert len(rows) == len(fields) * epochs

    image = rgb(render_plots.render_png(content))
    assert_drawn(image)
    # Four curves in the revision's colour, not just its legend swatch.
    assert pixels_near(image, REV_COLOUR) > 400


@pytest.mark.parametrize("model", MODELS)
def test_confusion_matrices_render_with_class_names(plots, repo, model):
    content = spec(plots, f"plots/confusion/{model}.csv")
    rows = content["data"]["values"]
    n_test = len((repo / f"plots/confusion/{model}.csv").read_text().splitlines()) - 1
    assert len(rows) == n_test
    assert {row["actual"] for row in rows} == CLASSES  # every tiny test class appears
    assert {row["predicted"] for row in rows} <= CLASSES
    encoding = content["spec"]["encoding"]
    assert (encoding["x"]["field"], encoding["y"]["field"]) == ("actual", "predicted")

    image = rgb(render_plots.render_png(content))
    assert_drawn(image)
    # The heat map's cells (coloured, unlike axes and text) fill at least half its 300x300 area.
    colours = image.getcolors(maxcolors=image.width * image.height)
    assert sum(count for count, pixel in colours if max(pixel) - min(pixel) > 40) > 45_000


def test_accuracy_comparison_is_a_horizontal_bar_chart(plots, repo):
    content = spec(plots, "plots/comparison/accuracy.csv")
    assert content["title"]["text"] == "Test accuracy by model"
    assert content["mark"]["type"] == "bar"
    assert content["encoding"]["y"]["field"] == "model"
    accuracy = {row["model"]: float(row["accuracy"]) for row in content["data"]["values"]}
    for model in MODELS:
        metrics = json.loads((repo / f"metrics/models/{model}.json").read_text())
        assert accuracy[model] == pytest.approx(metrics["accuracy"], abs=1e-6)

    image = rgb(render_plots.render_png(content))
    assert_drawn(image)
    assert pixels_near(image, REV_COLOUR) > 2000  # the bars themselves


@pytest.mark.parametrize("name", IMAGES)
def test_image_plots_are_valid_pngs(plots, name):
    (entry,) = plots[name]
    assert entry["type"] == "image"
    data = Path(entry["url"]).read_bytes()
    Image.open(io.BytesIO(data)).verify()
    assert_drawn(rgb(data))


def _embedded(page: str, kind: str) -> list[bytes]:
    pattern = rf'src="data:{re.escape(kind)};base64,([A-Za-z0-9+/=]+)"'
    return [base64.b64decode(data) for data in re.findall(pattern, page)]


def test_offline_page_embeds_every_plot_and_loads_nothing(repo, plots):
    out = run([sys.executable, "-m", "fmnist.render_plots"], repo).strip()
    page_path = repo / out
    assert page_path == repo / "dvc_plots" / "index.html"
    page = page_path.read_text()

    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    for name in plots:
        assert f"<h2>{name}</h2>" in page
    svgs = _embedded(page, "image/svg+xml")
    pngs = _embedded(page, "image/png")
    assert len(svgs) == sum(entries[0]["type"] == "vega" for entries in plots.values())
    assert len(pngs) == len(IMAGES)
    for svg in svgs:
        root = ET.fromstring(svg)
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
        assert len(list(root.iter())) > 20  # axes, marks and labels, not an empty canvas
    for png in pngs:
        assert_drawn(rgb(png))


def test_offline_page_without_vl_convert_says_how_to_install(tmp_path, monkeypatch, capsys, plots):
    monkeypatch.setitem(sys.modules, "vl_convert", None)  # makes `import vl_convert` fail
    source = tmp_path / "plots.json"
    source.write_text(json.dumps({"data": plots}))
    with pytest.raises(SystemExit) as exit_info:
        render_plots.main(["--json", str(source), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    assert "pip install -e '.[plots]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_make_plots_runs_the_offline_renderer():
    # --no-print-directory: under `make test`, the inherited make flags would add
    # "Entering/Leaving directory" lines.
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "plots", "REVS=main"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert ".venv/bin/python -m fmnist.render_plots main" in result.stdout.splitlines()


def test_offline_page_shows_dvc_errors_and_rejects_unknown_plot_types():
    errors = [{"name": "plots/missing.csv", "rev": "workspace", "msg": "file not found"}]
    page = render_plots.render_page({"data": {}, "errors": errors})
    assert "plots/missing.csv" in page and "file not found" in page and "No plots." in page
    odd = {"data": {"plots/x": [{"type": "table", "revisions": ["workspace"]}]}}
    with pytest.raises(render_plots.PipelineError, match="unknown plot type 'table'"):
        render_plots.render_page(odd)
