"""Every plot dvc.yaml declares renders to a real picture, and the offline page holds them all."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

from fmnist.tools import plots_page

from .conftest import ROOT
from .vega_specs import CLASSES, problems, render
from .workflow_repo import MODELS, committed_repo, copy_repo, dvc, run

CHARTS_PER_MODEL = ("train", "steps", "confusion", "per_class")
TEST_LOSS = "Test loss by epoch, every model"  # a top-level chart of compare's curves

# Vega's first colour: the bars of the first revision (the workspace).
REV_COLOUR = (0x4C, 0x78, 0xA8)
# The per-model chart's colours for training and test data.
TRAIN_COLOUR, TEST_COLOUR = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)
IMAGES = [f"plots/images/{m}_{kind}.png" for m in MODELS for kind in ("confusion", "predictions")]
IMAGES += ["plots/comparison/accuracy.png", "plots/data/samples.png"]
ARCHS = {"model_0": "linear", "model_1": "linear_relu", "model_2": "tinyvgg"}
PER_MODEL = [f"plots/{kind}/{m}.csv" for m in MODELS for kind in CHARTS_PER_MODEL]
COMPARISON = [f"plots/comparison/{name}.csv" for name in ("models", "epochs", "steps")]
CHARTS = [*PER_MODEL, *COMPARISON, "plots/data/classes.csv", TEST_LOSS]


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


def test_every_plot_is_shown_once_and_covered_here(plots):
    assert set(plots) == {*CHARTS, *IMAGES}
    assert all(len(entries) == 1 for entries in plots.values())


@pytest.mark.parametrize("name", CHARTS)
def test_every_chart_reads_at_a_glance(plots, name):
    # Titled in words, axes titled, loss and accuracy never on one axis, whole epochs, and
    # confusion matrices in label order: see vega_specs.problems.
    content = spec(plots, name)
    assert problems(name, content) == []
    assert_drawn(rgb(plots_page.render_png(content)))


@pytest.mark.parametrize("model", MODELS)
def test_per_model_charts_name_the_model_and_its_architecture(plots, model):
    for kind in CHARTS_PER_MODEL:
        title = spec(plots, f"plots/{kind}/{model}.csv")["title"]["text"]
        assert title.startswith(f"{model} ({ARCHS[model]}): ")


@pytest.mark.parametrize("model", MODELS)
def test_loss_and_accuracy_by_epoch_are_separate_charts_with_train_and_test_coloured(
    plots, repo, model
):
    content = spec(plots, f"plots/train/{model}.csv")
    axes = render(content)
    assert sorted((a.orient, a.title) for a in axes) == [
        ("X", "epoch"), ("X", "epoch"), ("Y", "accuracy"), ("Y", "cross-entropy loss")
    ]  # fmt: skip
    epochs = len((repo / f"plots/train/{model}.csv").read_text().splitlines()) - 1
    assert all(a.labels == [str(e) for e in range(1, epochs + 1)] for a in axes if a.orient == "X")
    image = rgb(plots_page.render_png(content))
    assert pixels_near(image, TRAIN_COLOUR) > 200 and pixels_near(image, TEST_COLOUR) > 200


@pytest.mark.parametrize("model", MODELS)
def test_the_running_training_loss_is_finer_than_epochs(plots, repo, model):
    rows = spec(plots, f"plots/steps/{model}.csv")["data"]["values"]
    epochs = len((repo / f"plots/train/{model}.csv").read_text().splitlines()) - 1
    assert len(rows) > 2 * epochs
    assert [float(r["epoch"]) for r in rows] == sorted(float(r["epoch"]) for r in rows)
    (y_axis,) = [a for a in render(spec(plots, f"plots/steps/{model}.csv")) if a.orient == "Y"]
    assert y_axis.title == "training loss (cross-entropy)"


@pytest.mark.parametrize("name", ["plots/comparison/epochs.csv", TEST_LOSS])
def test_one_chart_per_metric_overlays_every_model(plots, name):
    content = spec(plots, name)
    models = {row["model"] for row in content["data"]["values"]}
    assert models == {f"{m} ({ARCHS[m]})" for m in MODELS}
    assert content["encoding"]["color"]["field"] == "model"
    (y_axis,) = [a for a in render(content) if a.orient == "Y"]
    assert y_axis.title in ("test accuracy", "test loss (cross-entropy)")


@pytest.mark.parametrize("model", MODELS)
def test_confusion_axes_follow_label_order_as_in_the_png(plots, repo, model):
    from fmnist.pipeline.classes import load_classes
    from fmnist.pipeline.figures import confusion_figure

    content = spec(plots, f"plots/confusion/{model}.csv")
    axes = render(content)
    # Counts and shares of each true class, side by side; true classes down, predictions across.
    assert sorted(a.title for a in axes if a.labels) == ["actual", "actual"] + ["predicted"] * 2
    for axis in axes:
        if axis.labels:
            assert axis.labels == CLASSES  # T-shirt/top first (left or top), Ankle boot last
    classes = load_classes(repo / "data/prepared")  # what compare draws with
    fig, ax = confusion_figure(np.eye(len(classes), dtype=int), classes, model)
    png_columns = [t.get_text() for t in ax.get_xticklabels()]
    png_rows = [t.get_text() for t in ax.get_yticklabels()]
    plt.close(fig)
    assert png_columns == png_rows == CLASSES
    shares = [float(r["share"]) for r in content["data"]["values"]]
    assert all(0 <= share <= 1 for share in shares)


def test_accuracy_comparison_is_a_horizontal_bar_chart_in_model_order(plots, repo):
    content = spec(plots, "plots/comparison/models.csv")
    assert content["title"]["text"] == "Test accuracy by model"
    assert content["mark"]["type"] == "bar"
    assert content["encoding"]["y"]["field"] == "model"
    accuracy = {row["model"]: float(row["accuracy"]) for row in content["data"]["values"]}
    for model in MODELS:
        metrics = json.loads((repo / "metrics/test.json").read_text())[model]
        assert accuracy[model] == pytest.approx(metrics["accuracy"], abs=1e-6)
    (y_axis,) = [a for a in render(content) if a.orient == "Y"]
    assert y_axis.labels == list(MODELS)

    image = rgb(plots_page.render_png(content))
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
    out = run([sys.executable, "-m", "fmnist.tools.plots_page"], repo).strip()
    page_path = repo / out
    assert page_path == repo / "dvc_plots" / "index.html"
    page = page_path.read_text()

    assert "<script" not in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    headings = re.findall(r"<h2>([^<]*)</h2>", page)
    assert len(headings) == len(plots)
    # Titles, as the charts inside them are titled, not file paths.
    assert not [h for h in headings if "/" in h or h.endswith((".csv", ".png"))], headings
    for name, entries in plots.items():
        assert f"<h2>{html.escape(plots_page.section_title(name, entries))}</h2>" in page
    assert "<h2>model_2: confusion matrix</h2>" in page
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


def test_each_chart_can_be_written_as_a_png_named_after_it(plots, tmp_path):
    source = tmp_path / "plots.json"
    source.write_text(json.dumps({"data": plots}))
    out = ["--out", str(tmp_path / "page"), "--png", str(tmp_path / "png")]
    plots_page.main(["--json", str(source), *out])
    names = {path.name for path in (tmp_path / "png").iterdir()}
    assert "train_model_2.png" in names and "test_loss_by_epoch_every_model.png" in names
    assert len(names) == len(CHARTS)
    assert_drawn(rgb((tmp_path / "png" / "confusion_model_0.png").read_bytes()))


def test_offline_page_without_vl_convert_says_how_to_install(tmp_path, monkeypatch, capsys, plots):
    monkeypatch.setitem(sys.modules, "vl_convert", None)  # makes `import vl_convert` fail
    source = tmp_path / "plots.json"
    source.write_text(json.dumps({"data": plots}))
    with pytest.raises(SystemExit) as exit_info:
        plots_page.main(["--json", str(source), "--out", str(tmp_path / "out")])
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
    assert ".venv/bin/python -m fmnist.tools.plots_page main" in result.stdout.splitlines()


def test_offline_page_shows_dvc_errors_and_rejects_unknown_plot_types():
    errors = [{"name": "plots/missing.csv", "rev": "workspace", "msg": "file not found"}]
    page = plots_page.render_page({"data": {}, "errors": errors})
    assert "plots/missing.csv" in page and "file not found" in page and "No plots." in page
    odd = {"data": {"plots/x": [{"type": "table", "revisions": ["workspace"]}]}}
    with pytest.raises(plots_page.PipelineError, match="unknown plot type 'table'"):
        plots_page.render_page(odd)
