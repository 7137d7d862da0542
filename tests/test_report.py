"""The accuracy gate's decisions, from `dvc metrics diff --all --json` output."""

from __future__ import annotations

from fmnist.tools.change_report import accuracy_changes, failure_message, regressions


def _diff(**accuracy: tuple[float | None, float | None]) -> dict:
    return {
        "metrics/test.json": {
            f"{model}.{key}": {"old": old, "new": new}
            for model, (old, new) in accuracy.items()
            for key in ("accuracy", "loss")
        }
    }


def test_only_a_drop_past_the_threshold_fails_and_new_or_removed_models_are_reported():
    diff = _diff(
        model_0=(0.90, 0.885),  # -1.5 points
        model_1=(0.90, 0.89),  # -1.0 point: at the threshold, allowed
        model_2=(0.80, 0.95),  # a gain
        model_3=(None, 0.50),  # new
        model_4=(0.70, None),  # removed
    )
    # Losses and other metrics files are not the gate's business.
    diff["other.json"] = {"model_0.accuracy": {"old": 1.0, "new": 0.1}}
    changes = accuracy_changes(diff)
    assert [c.model for c in changes] == ["model_0", "model_1", "model_2", "model_3", "model_4"]
    verdicts = [c.verdict(1.0) for c in changes]
    assert verdicts == ["dropped", "ok", "ok", "new model", "removed"]
    assert [c.model for c in regressions(changes, 1.0)] == ["model_0"]
    assert regressions(changes, 2.0) == []
    assert failure_message(regressions(changes, 1.0), 1.0) == (
        "model_0 lost 1.50 percentage points of test accuracy (90.00% -> 88.50%); "
        "gate.max_accuracy_drop allows at most 1"
    )
