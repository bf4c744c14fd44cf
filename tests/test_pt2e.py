"""cpu-torch int8 through PT2E: which layers go to int8, the codes the file keeps, reload as
measured, and what the label and notes say when a fallback runs instead."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from torch import nn

from autocompress.deploy import Deployed, deploy, int8_supported
from autocompress.errors import TrialFailure
from autocompress.methods.int8 import Int8
from autocompress.methods.structured import StructuredPruning
from autocompress.objective import summary_of_what_ran
from autocompress.pipeline import CompressionConfig
from autocompress.runtimes import load_deployed, runtime_for_file
from autocompress.runtimes._pt2e_tools import pt2e_int8, pt2e_unavailable, save_pt2e
from tests.conftest import tiny_cnn

needs_pt2e = pytest.mark.skipif(
    pt2e_unavailable() is not None or not int8_supported(), reason="no torchao / x86 int8 here"
)
_TORCH = "autocompress.runtimes._torch"


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return tiny_cnn().eval()


def _batches(n: int = 4, rows: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(rows, 1, 8, 8, generator=g) for _ in range(n)]


class _Gated(nn.Module):
    """Keyword inputs and a data-dependent branch: FX cannot trace it, ``torch.export``
    cannot either (the branch reads a tensor's value)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, features: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        if scale.sum() > 0:
            return self.fc(features * scale)
        return self.fc(features)


def _gated_batches() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return [
        {"features": torch.randn(16, 8, generator=g), "scale": torch.rand(16, 8, generator=g)}
        for _ in range(3)
    ]


@needs_pt2e
@pytest.mark.parametrize("per_channel", [True, False])
def test_pt2e_stores_each_layers_weights_as_int8_codes_on_the_artifacts_grid(tmp_path, per_channel):
    model = _cnn()
    batches = _batches()
    q = pt2e_int8(
        model, batches[0], batches, dynamic=False, per_channel=per_channel, reduce_range=False
    )
    # both convolutions and both linear layers, none left in float
    assert q.quantized == ("conv2d", "conv2d_1", "linear", "linear_1")
    assert q.floating == ()
    save_pt2e(q, tmp_path / "m.pt2")
    loaded = torch.export.load(str(tmp_path / "m.pt2"))
    codes = [t for t in loaded.constants.values() if t.dtype == torch.int8]
    codes += [t for t in loaded.state_dict.values() if t.dtype == torch.int8]
    # the conv weights after BatchNorm folding, then the linear weights as they are
    conv1 = (
        model[0].weight
        * (model[1].weight / (model[1].running_var + model[1].eps).sqrt())[:, None, None, None]
    )
    weights = [conv1, model[3].weight, model[7].weight, model[9].weight]
    assert sorted(tuple(c.shape) for c in codes) == sorted(tuple(w.shape) for w in weights)
    for w in weights:
        flat = w.detach().reshape(w.shape[0], -1)
        scale = flat.abs().amax(1, keepdim=True) if per_channel else flat.abs().max()
        expected = torch.round(flat / (scale / 127)).clamp(-127, 127).to(torch.int8)
        stored = next(c for c in codes if c.shape == w.shape).reshape(w.shape[0], -1)
        # codes in [-127, 127] with scale max|w| / 127: at most one step off after float error
        assert (stored.int() - expected.int()).abs().max() <= 1
        assert stored.abs().max() == 127


@needs_pt2e
@pytest.mark.slow  # Inductor compiles twice (deploy, reload): a minute on a small CPU
def test_pt2e_deploy_reloads_with_the_outputs_it_was_measured_with(tmp_path):
    model = _cnn()
    batches = _batches()
    with mock.patch(f"{_TORCH}._legacy_int8", side_effect=TrialFailure("off")):
        d = deploy(
            model, tmp_path / "m", example_input=batches[0][:1], int8=Int8(),
            calibration=batches, timing_input=batches[0],
        )  # fmt: skip
    assert d.kind == "pt2e-int8-static" and d.int8_mode == "static"
    assert d.path.endswith(".pt2") and runtime_for_file(d.path).name == "torch"
    assert any("int8 kernels on 4 convolution/linear layers" in n for n in d.notes)
    x = batches[1]
    measured = d.run(x)
    assert torch.equal(load_deployed(d.path)(x), measured)
    with torch.inference_mode():
        expected = model(x)
    # int8, not float: close to the float model without being equal to it
    assert not torch.equal(measured, expected)
    assert (measured.argmax(1) == expected.argmax(1)).float().mean() >= 0.9


def test_a_model_pt2e_cannot_take_falls_back_and_says_so(tmp_path):
    batches = _gated_batches()
    d = deploy(
        _Gated().eval(), tmp_path / "m", example_input=batches[0], int8=Int8(mode="static"),
        calibration=batches, timing_input=batches[0],
    )  # fmt: skip
    # neither PT2E nor FX static can take it: dynamic int8 ran, and the record says so
    assert d.kind == "torchscript-dynamic-int8" and d.int8_mode == "dynamic"
    assert d.path.endswith(".pt")
    assert d.notes[0].startswith("PT2E static int8")  # failed, or not installed
    assert any("FX static int8 could not trace" in n for n in d.notes)
    config = CompressionConfig.of(int8=Int8(mode="static", reduce_range=True))
    label = summary_of_what_ran(config, d)
    assert label.endswith("| int8 dynamic rr (static fell back)") and "static rr" not in label


def test_the_label_is_the_configuration_where_the_asked_mode_ran():
    config = CompressionConfig.of(structured=StructuredPruning(0.5), int8=Int8(mode="static"))
    ran = Deployed(lambda x: x, "pt2e-int8-static", "m.pt2", 1, int8_mode="static")
    assert summary_of_what_ran(config, ran) == config.describe()
    fell_back = Deployed(lambda x: x, "torchscript-dynamic-int8", "m.pt", 1, int8_mode="dynamic")
    label = summary_of_what_ran(config, fell_back)
    assert label.startswith("structured 50% | ") and "int8 static" not in label
    assert label.endswith(" | int8 dynamic (static fell back)")
    assert summary_of_what_ran(CompressionConfig(), fell_back) == "uncompressed"


def test_pt2e_is_built_only_where_the_legacy_path_cannot_run_the_mode(tmp_path):
    batches = _batches()
    with mock.patch(f"{_TORCH}._pt2e") as pt2e:
        d = deploy(
            _cnn(), tmp_path / "cnn", example_input=batches[0][:1], int8=Int8(),
            calibration=batches, timing_input=batches[0],
        )  # fmt: skip
    # FX runs static int8 on the CNN: no PT2E build (no Inductor compile), and the note says why
    pt2e.assert_not_called()
    assert d.kind == "torchscript-fx-int8" and d.int8_mode == "static"
    assert "PT2E only where the legacy path cannot run the mode" in d.notes[0]
    # where FX cannot take the model, PT2E is still tried before the dynamic fallback
    gated = _gated_batches()
    failed = (None, ["PT2E static int8 failed on this model (turned off)"])
    with mock.patch(f"{_TORCH}._pt2e", return_value=failed) as pt2e:
        d = deploy(
            _Gated().eval(), tmp_path / "gated", example_input=gated[0], int8=Int8(),
            calibration=gated, timing_input=gated[0],
        )  # fmt: skip
    pt2e.assert_called_once()
    assert d.kind == "torchscript-dynamic-int8" and d.notes[0] == failed[1][0]
