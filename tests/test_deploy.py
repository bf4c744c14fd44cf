import onnx
import pytest
import torch

from autocompress.deploy import deploy, export_onnx
from autocompress.pipeline import CompressionConfig, compress
from autocompress.steps.prune import PruneConfig
from autocompress.steps.quantize import QuantizeConfig, int8_supported

FLOAT = CompressionConfig(prune=PruneConfig("structured", 0.5))
INT8 = CompressionConfig(
    prune=PruneConfig("structured", 0.5), quantize=QuantizeConfig(8, int8_activations=True)
)


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("config", [FLOAT, INT8], ids=["fp32", "int8"])
def test_each_target_artifact_matches_the_compressed_model(tiny, tmp_path, runtime, config):
    if config is INT8 and runtime == "torch" and not int8_supported():
        pytest.skip("no x86 int8 kernels in this torch build")
    c = compress(tiny, config, tmp_path / "m.acpk")
    int8 = config.quantize.int8_activations
    d = deploy(
        c.model,
        tiny.example_input,
        tmp_path / "m",
        runtime=runtime,
        int8_module=c.deployable if int8 else None,
        calibration_x=tiny.train.x[:128] if int8 and runtime == "onnxruntime" else None,
    )
    assert (tmp_path / d.path).exists() and d.size_bytes > 0
    x = tiny.val.x[:64]
    with torch.inference_mode():
        expected = c.model(x)
    got = d.run(x)
    if int8:
        # int8: outputs close, predictions nearly always the same
        assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.9
        assert torch.allclose(got, expected, atol=0.5)
    else:
        assert torch.allclose(got, expected, atol=1e-4)
    assert d.predict(tiny.val.x, batch_size=50).shape == (len(tiny.val), 4)


def test_onnx_round_trip(tiny, tmp_path):
    export_onnx(tiny.model, tiny.example_input, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_unknown_runtime(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown runtime"):
        deploy(tiny.model, tiny.example_input, tmp_path / "m", runtime="tflite")


def test_cpu_torch_keeps_the_faster_form_and_reloads_it(tiny, tmp_path, monkeypatch):
    """optimize_for_inference is kept only when timed faster, and the file says so."""
    import autocompress.deploy as deploy_mod

    x = tiny.val.x[:32]
    with torch.inference_mode():
        expected = tiny.model(x)
    for faster, kind in ((True, "torchscript-onednn"), (False, "torchscript")):
        monkeypatch.setattr(deploy_mod, "faster_of", lambda a, b, x, faster=faster: faster)
        d = deploy(tiny.model, tiny.example_input, tmp_path / kind, timing_input=x)
        assert d.kind == kind
        assert torch.allclose(d.run(x), expected, atol=1e-5)
        loaded = deploy_mod.load_torchscript(d.path)
        with torch.inference_mode():
            assert torch.allclose(loaded(x), expected, atol=1e-5)
        assert ("mkldnn" in str(loaded.graph)) == (kind == "torchscript-onednn")


def test_faster_of_tells_a_slow_callable_from_a_fast_one():
    import time

    from autocompress.deploy import faster_of

    def slow(x):
        time.sleep(0.002)
        return x

    def fast(x):
        return x

    x = torch.zeros(1)
    assert faster_of(fast, slow, x, rounds=3, block_ms=2.0)
    assert not faster_of(slow, fast, x, rounds=3, block_ms=2.0)
