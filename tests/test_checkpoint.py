import json

import pytest
import torch

from fmnist.checkpoint import load_checkpoint, save_checkpoint, sidecar_path
from fmnist.errors import PipelineError
from fmnist.models import build_model

META = {"arch": "tinyvgg", "hidden_units": 4, "in_channels": 1, "image_size": 28, "num_classes": 10}


def test_round_trip_gives_the_same_model(tmp_path):
    torch.manual_seed(0)
    model = build_model("tinyvgg", 4).eval()
    weights = tmp_path / "models" / "m.pth"
    save_checkpoint(model, weights, {**META, "model": "m"})

    loaded, meta = load_checkpoint(weights)
    x = torch.rand(3, 1, 28, 28)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert meta["model"] == "m" and meta["arch"] == "tinyvgg"
    assert json.loads(sidecar_path(weights).read_text())["format"] == 1
    assert sorted(p.name for p in weights.parent.iterdir()) == ["m.json", "m.pth"]


def test_same_weights_give_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = build_model("linear", 8)
    save_checkpoint(model, tmp_path / "a.pth", {**META, "arch": "linear", "hidden_units": 8})
    save_checkpoint(model, tmp_path / "b.pth", {**META, "arch": "linear", "hidden_units": 8})
    assert (tmp_path / "a.pth").read_bytes() == (tmp_path / "b.pth").read_bytes()


def test_shapes_that_do_not_fit_the_sidecar_are_rejected(tmp_path):
    weights = tmp_path / "m.pth"
    save_checkpoint(build_model("tinyvgg", 4), weights, META)
    sidecar_path(weights).write_text(json.dumps({**META, "format": 1, "hidden_units": 8}))
    with pytest.raises(PipelineError, match="do not fit a tinyvgg model with hidden_units=8"):
        load_checkpoint(weights)


def test_truncated_file_is_rejected(tmp_path):
    weights = tmp_path / "m.pth"
    save_checkpoint(
        build_model("linear", 4), weights, {**META, "arch": "linear", "hidden_units": 4}
    )
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(PipelineError, match="not a loadable weights file"):
        load_checkpoint(weights)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_malicious_pickle_is_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pth"
    torch.save({"layer_stack.1.weight": _Exploit(marker)}, weights)
    sidecar_path(weights).write_text(json.dumps({**META, "format": 1}))
    with pytest.raises(PipelineError, match="not a loadable weights file"):
        load_checkpoint(weights)
    assert not marker.exists()
    # The file is a real exploit: loading it unsafely does run its code.
    torch.load(weights, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("sidecar", ["[1, 2]", '{"format": 1, "arch": "linear"}', "{not json"])
def test_a_bad_sidecar_is_rejected(tmp_path, sidecar):
    weights = tmp_path / "m.pth"
    save_checkpoint(
        build_model("linear", 4), weights, {**META, "arch": "linear", "hidden_units": 4}
    )
    sidecar_path(weights).write_text(sidecar)
    with pytest.raises(PipelineError, match=r"m\.json: not"):
        load_checkpoint(weights)
