"""Where the pipeline reads and writes, relative to the project root (dvc.yaml uses the same)."""

from pathlib import Path

DATA_ROOT = Path("data")
RAW_DIR = DATA_ROOT / "FashionMNIST" / "raw"
PREPARED_DIR = DATA_ROOT / "prepared"
CLASSES_FILE = "classes.json"  # the class names, in label order, beside the prepared tensors
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
MODEL_METRICS_DIR = METRICS_DIR / "models"
TRAIN_METRICS_DIR = METRICS_DIR / "train"
PER_CLASS_DIR = METRICS_DIR / "per_class"
PLOTS_DIR = Path("plots")
CURVES_DIR = PLOTS_DIR / "train"
CONFUSION_DIR = PLOTS_DIR / "confusion"
IMAGES_DIR = PLOTS_DIR / "images"
COMPARISON_DIR = PLOTS_DIR / "comparison"
SAMPLES_PNG = PLOTS_DIR / "data" / "samples.png"


def weights_path(model: str) -> Path:
    """Return where a model's state_dict lives (its JSON sidecar sits beside it)."""
    return MODELS_DIR / f"{model}.pth"
