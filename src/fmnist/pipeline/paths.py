"""Where the pipeline reads and writes, relative to the project root (dvc.yaml uses the same)."""

from pathlib import Path

DATA_ROOT = Path("data")
RAW_DIR = DATA_ROOT / "FashionMNIST" / "raw"
# The dataset's four IDX files by split, images then labels, named as torchvision names them.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
PREPARED_DIR = DATA_ROOT / "prepared"
SCORES_DIR = DATA_ROOT / "scores"  # each model's test scores and run facts, from evaluate
CLASSES_FILE = "classes.json"  # the class names, in label order, beside the prepared tensors
MODELS_DIR = Path("models")
# Every model's test accuracy and loss, from compare: the one file `dvc metrics` reads.
METRICS_FILE = Path("metrics") / "test.json"
# Each model's last training time on this machine: no DVC output (it differs on every run) and
# not in git, read by the report's table when present.
TIMINGS_DIR = Path("timings")
PREDICTIONS_DIR = DATA_ROOT / "predictions"  # each test image's class and prediction, by model
PLOTS_DIR = Path("plots")
CURVES_DIR = PLOTS_DIR / "train"  # per epoch
STEPS_DIR = PLOTS_DIR / "steps"  # the running training loss
CONFUSION_DIR = PLOTS_DIR / "confusion"
PER_CLASS_DIR = PLOTS_DIR / "per_class"
IMAGES_DIR = PLOTS_DIR / "images"
COMPARISON_DIR = PLOTS_DIR / "comparison"
COMPARISON_CSV = COMPARISON_DIR / "models.csv"  # one row per model: the table and the bar chart
SAMPLES_PNG = PLOTS_DIR / "data" / "samples.png"
CLASS_COUNTS_CSV = PLOTS_DIR / "data" / "classes.csv"


def weights_path(model: str) -> Path:
    """Return where a model's state_dict lives (its JSON sidecar sits beside it)."""
    return MODELS_DIR / f"{model}.pth"
