"""The deployed forms: what is timed and evaluated is what ships, for every input form."""

import onnx
import pytest
import torch

from autocompress.data import TensorData, call_model, input_batches
from autocompress.deploy import deploy, export_onnx, int8_supported
from autocompress.errors import TrialFailure
from autocompress.methods.int8 import Int8
from autocompress.methods.structured import StructuredPruning
from autocompress.methods.weights import WeightQuantization
from autocompress.pipeline import CompressionConfig, compress
from autocompress.tasks import Regression


@pytest.fixture(scope="module")
def pruned(tiny, tmp_path_factory):
    config = CompressionConfig.of(structured=StructuredPruning(0.5), weights=WeightQuantization(8))
    out = tmp_path_factory.mktemp("pruned")
    return compress(
        tiny.model,
        config,
        out / "m.acpk",
        task=tiny.task,
        train=tiny.train,
        example_input=tiny.example_input,
    ).model


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("mode", [None, "static", "dynamic"])
def test_each_target_runs_the_compressed_model(tiny, pruned, tmp_path, runtime, mode):
    if mode and runtime == "torch" and not int8_supported():
        pytest.skip("no x86 int8 kernels in this torch build")
    int8 = Int8(mode=mode) if mode else None
    d = deploy(
        pruned,
        tmp_path / "m",
        example_input=tiny.example_input,
        runtime=runtime,
        int8=int8,
        calibration=input_batches(tiny.train, 128),
    )
    assert (tmp_path / d.path).exists() and d.size_bytes == (tmp_path / d.path).stat().st_size
    x = tiny.val.x[:64]
    with torch.inference_mode():
        expected = pruned(x)
    got = d.run(x)
    if int8:
        # cpu-torch keeps PT2E or the legacy form of the same mode, whichever runs faster
        assert (
            d.kind
            in {
                ("torch", "static"): {"pt2e-int8-static", "torchscript-fx-int8"},
                ("torch", "dynamic"): {"pt2e-int8-dynamic", "torchscript-dynamic-int8"},
                ("onnxruntime", "static"): {"onnx-qdq-int8"},
                ("onnxruntime", "dynamic"): {"onnx-dynamic-int8"},
            }[runtime, mode]
        )
        if runtime == "torch":
            assert d.int8_mode == mode
        assert (got.argmax(1) == expected.argmax(1)).float().mean() > 0.9
    else:
        assert torch.allclose(got, expected, atol=1e-4)
    if mode == "dynamic" and d.kind == "torchscript-dynamic-int8":
        assert any("dynamic int8 on" in n for n in d.notes)
    if runtime == "onnxruntime":  # which exporter wrote the graph
        assert "ONNX graph from torch.onnx's torchscript exporter" in d.notes


def test_int8_files_are_about_a_quarter_of_float(digits, tmp_path):
    model, example = digits.model, digits.example_input
    fp32 = deploy(model, tmp_path / "f", example_input=example, runtime="onnxruntime")
    q = deploy(
        model,
        tmp_path / "q",
        example_input=example,
        runtime="onnxruntime",
        int8=Int8(),
        calibration=input_batches(digits.train, 64),
    )
    assert fp32.size_bytes > 4 * 4 * 80_000 / 4  # 90k float32 weights
    assert q.size_bytes < 0.35 * fp32.size_bytes


def test_onnx_export_names_inputs_and_keeps_batch_dynamic(tiny, tmp_path):
    export_onnx(tiny.model, tiny.example_input, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.input[0].name == "input"
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


class _DictModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(30, 8)
        self.fc = torch.nn.Linear(8, 30)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask[..., None]
        return {"logits": self.fc(h)}  # token logits, like a language model


def test_dict_inputs_get_named_inputs_and_a_dynamic_sequence_axis(tmp_path):
    torch.manual_seed(0)
    model = _DictModel().eval()
    example = {
        "input_ids": torch.randint(0, 30, (1, 6)),
        "attention_mask": torch.ones(1, 6, dtype=torch.long),
    }
    other = {
        "input_ids": torch.randint(0, 30, (3, 11)),
        "attention_mask": torch.ones(3, 11, dtype=torch.long),
    }
    expected = call_model(model, other)["logits"]
    for runtime in ("torch", "onnxruntime"):
        d = deploy(model, tmp_path / runtime, example_input=example, runtime=runtime)
        assert torch.allclose(d.run(other), expected, atol=1e-5), runtime
    graph = onnx.load(str(tmp_path / "onnxruntime.onnx")).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert graph.input[0].type.tensor_type.shape.dim[1].dim_param == "sequence"


def test_an_unknown_onnx_exporter_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="exporter must be one of"):
        export_onnx(tiny.model, tiny.example_input, tmp_path / "m.onnx", exporter="tflite")


@pytest.mark.slow  # the dynamo exporter takes about a minute on a small CPU
def test_the_dynamo_exporter_gives_the_same_names_axes_and_outputs(tmp_path):
    pytest.importorskip("onnxscript")
    from autocompress.deploy import load_onnx

    torch.manual_seed(0)
    model = _DictModel().eval()
    example = {  # more than one row and token: an axis of size 1 would be specialised
        "input_ids": torch.randint(0, 30, (2, 6)),
        "attention_mask": torch.ones(2, 6, dtype=torch.long),
    }
    other = {
        "input_ids": torch.randint(0, 30, (3, 11)),
        "attention_mask": torch.ones(3, 11, dtype=torch.long),
    }
    expected = call_model(model, other)["logits"]
    for exporter in ("torchscript", "dynamo"):
        path = tmp_path / f"{exporter}.onnx"
        export_onnx(model, example, path, exporter=exporter)
        graph = onnx.load(str(path)).graph
        assert [i.name for i in graph.input] == ["input_ids", "attention_mask"], exporter
        assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == [
            "batch",
            "sequence",
        ], exporter
        assert torch.allclose(load_onnx(path)(other), expected, atol=1e-5), exporter


def test_unknown_runtime(tiny, tmp_path):
    with pytest.raises(ValueError, match="unknown runtime"):
        deploy(tiny.model, tmp_path / "m", example_input=tiny.example_input, runtime="tflite")


def test_dynamic_int8_on_a_model_without_linear_layers_fails_as_int8(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten()).eval()
    with pytest.raises(TrialFailure, match="int8 failed: dynamic int8 quantizes linear") as err:
        deploy(
            model, tmp_path / "m", example_input=torch.zeros(1, 1, 5, 5), int8=Int8(mode="dynamic")
        )
    assert err.value.method == "int8"


def test_cpu_torch_keeps_the_faster_form_and_reloads_it(tiny, tmp_path, monkeypatch):
    """optimize_for_inference is kept only when timed faster, and the file says so."""
    import autocompress.runtimes._torchscript_tools as torch_deploy
    from autocompress.deploy import load_torchscript

    x = tiny.val.x[:32]
    with torch.inference_mode():
        expected = tiny.model(x)
    for faster, kind in ((True, "torchscript-onednn"), (False, "torchscript")):
        monkeypatch.setattr(torch_deploy, "faster_of", lambda a, b, x, faster=faster: faster)
        d = deploy(tiny.model, tmp_path / kind, example_input=tiny.example_input, timing_input=x)
        assert d.kind == kind
        assert torch.allclose(d.run(x), expected, atol=1e-5)
        loaded = load_torchscript(d.path)
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


def test_low_bit_weights_deploy_as_matmulnbits_and_keep_the_file_small(tmp_path):
    pytest.importorskip("transformers")
    from autocompress.workload import prepare
    from tests.model_families import bert_workload

    torch.manual_seed(0)
    wl = bert_workload()
    model = wl.model_factory().eval()
    for p in model.parameters():  # random biases (zero biases are deduplicated by the exporter)
        if p.dim() == 1:
            torch.nn.init.normal_(p, std=0.02)
    loaded = prepare(type(wl)(train=wl.train, val=wl.val, test=wl.test, model=model))
    config = CompressionConfig.of(weights=WeightQuantization(4, "group32"))
    c = compress(
        model,
        config,
        tmp_path / "m.acpk",
        task=loaded.task,
        train=loaded.train,
        example_input=loaded.example_input,
    )
    fp32 = deploy(
        c.model, tmp_path / "f", example_input=loaded.example_input, runtime="onnxruntime"
    )
    nbits = deploy(
        c.model,
        tmp_path / "q",
        example_input=loaded.example_input,
        runtime="onnxruntime",
        weights=config.get("weights"),
    )
    assert nbits.kind == "onnx-matmulnbits-int4" and fp32.kind == "onnx-fp32"
    assert nbits.size_bytes < 0.5 * fp32.size_bytes
    x = loaded.example_input
    close = torch.nn.functional.cosine_similarity(nbits.run(x), fp32.run(x)).min()
    assert close > 0.98
    torchscript = deploy(c.model, tmp_path / "t", example_input=x, weights=config.get("weights"))
    assert torchscript.kind.startswith("torchscript")  # no low-bit kernel in PyTorch: float


def test_multihead_attention_exports_with_a_dynamic_sequence_length(tmp_path):
    class Seq(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.emb = torch.nn.Embedding(20, 16)

        def forward(self, ids):
            return self.encoder(self.emb(ids))

    torch.manual_seed(0)
    model = Seq().eval()
    example = torch.randint(0, 20, (1, 6))
    d = deploy(model, tmp_path / "m", example_input=example, runtime="onnxruntime")
    for shape in ((1, 6), (3, 11), (2, 1)):
        ids = torch.randint(0, 20, shape)
        with torch.inference_mode():
            assert torch.allclose(d.run(ids), model(ids), atol=1e-5), shape
    assert type(model.encoder.layers[0].self_attn) is torch.nn.MultiheadAttention  # not changed


def test_resident_memory_of_a_deployed_model_grows_with_its_weights(tmp_path):
    from autocompress.measure import resident_memory_bytes

    sizes = {}
    for width in (256, 2048):
        model = torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.Linear(width, 4)).eval()
        d = deploy(
            model,
            tmp_path / f"m{width}",
            example_input=torch.zeros(1, width),
            runtime="onnxruntime",
        )
        sizes[width] = resident_memory_bytes(d.path, torch.zeros(8, width))
    weights = 2048 * 2048 * 4  # 16 MB more float32 weights in the larger model
    assert sizes[2048] - sizes[256] > 0.8 * weights


def test_int4_embeddings_keep_the_graph_valid_when_it_has_opset_17_reductions(tmp_path):
    """MiniLM's study failed here: int4 ``Gather`` needs opset 21, and ONNX Runtime's quantizer
    raised the opset without converting ``ReduceL2`` (from ``F.normalize``), so the file did not
    load. The graph is now converted first; the deployed file loads and matches."""

    class Embedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(64, 32)
            self.proj = torch.nn.Linear(32, 32)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            pooled = self.proj(self.embed(ids)).mean(dim=1)
            return torch.nn.functional.normalize(pooled, dim=-1)

    torch.manual_seed(0)
    model = Embedder().eval()
    x = torch.randint(0, 64, (2, 8))
    weights = WeightQuantization(4, "group32", embeddings=True)
    c = compress(
        model,
        CompressionConfig.of(weights=weights),
        tmp_path / "m.acpk",
        task=Regression(),
        train=TensorData(x, torch.zeros(2, 32)),
        example_input=x,
    )
    d = deploy(c.model, tmp_path / "q", example_input=x, runtime="onnxruntime", weights=weights)
    assert d.kind == "onnx-matmulnbits-int4"
    ops = {n.op_type for n in onnx.load(str(d.path)).graph.node}
    assert "GatherBlockQuantized" in ops or "MatMulNBits" in ops
    with torch.no_grad():
        expected = c.model(x)
    assert torch.nn.functional.cosine_similarity(d.run(x), expected).min() > 0.95
