"""Every runtime passes the same round trip: deploy, files on disk, reload, same outputs.

Then what each runtime offers on top: OpenVINO's precisions, NNCF int8 and low-bit weights, the
host's choices filtered from the search, and a study on ``cpu-openvino``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from typer.testing import CliRunner

from autocompress.cli import app
from autocompress.data import as_output, call_model
from autocompress.deploy import deploy
from autocompress.errors import TrialFailure
from autocompress.methods import Method
from autocompress.methods.int8 import Int8
from autocompress.methods.runtime import RuntimeSettings, not_offered
from autocompress.methods.weights import WeightQuantization
from autocompress.runtimes import RUNTIMES, load_deployed, runtime_for_file, targets
from autocompress.search_space import parse_search_space_text
from tests.conftest import tiny_cnn
from tests.methods.tiny_transformers import bert, gpt2, tokens

AVAILABLE = [name for name, cls in RUNTIMES.items() if cls.available() is None]


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return tiny_cnn().eval()


def _image(batch: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


# (model, example to deploy with, a batch of another size and sequence length)
MODELS = {
    "cnn": (_cnn, lambda: _image(2), lambda: _image(5, 1)),
    "bert": (bert, lambda: tokens(2, 8), lambda: tokens(3, 12, 1)),
    "gpt2": (gpt2, lambda: tokens(2, 8), lambda: tokens(3, 12, 1)),
}


def _eager(model: torch.nn.Module, x) -> torch.Tensor:
    with torch.inference_mode():
        return as_output(call_model(model, x)).float()


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("runtime", AVAILABLE)
def test_every_runtime_round_trips(tmp_path, runtime, model_name):
    make, example, other = MODELS[model_name]
    model = make()
    d = deploy(model, tmp_path / "m", example_input=example(), runtime=runtime)
    # the size is every file the runtime loads, read back from disk
    assert d.files and all(Path(f).exists() for f in d.files)
    assert d.size_bytes == sum(Path(f).stat().st_size for f in d.files)
    assert runtime_for_file(d.path) is RUNTIMES[runtime]
    # another batch size and sequence length: the axes are dynamic
    x = other()
    expected = _eager(model, x)
    got = d.run(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # reloaded from disk in a fresh callable: the same outputs as the form that was measured
    torch.testing.assert_close(load_deployed(d.path)(x), got, rtol=0, atol=1e-6)


def test_targets_come_from_the_runtimes():
    assert targets()[:3] == ("cpu-torch", "cpu-onnxruntime", "cpu-openvino")
    assert "cuda-torch" in targets() and "cuda-openvino" not in targets()


def test_unknown_file_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.pt, \.pt2, \.onnx, \.xml"):
        runtime_for_file(tmp_path / "model.tflite")


openvino_only = pytest.mark.skipif("openvino" not in AVAILABLE, reason="openvino not installed")


@openvino_only
def test_openvino_precisions_run_in_the_precision_recorded_in_the_file(tmp_path):
    from autocompress.runtimes import OpenVINO
    from autocompress.runtimes._openvino import cpu_precisions

    model, x = gpt2(), tokens(3, 12, 1)
    expected = _eager(model, x)
    f32 = deploy(model, tmp_path / "f32", example_input=tokens(2, 8), runtime=OpenVINO())
    for precision in cpu_precisions():
        if precision == "f32":
            continue
        d = deploy(
            model, tmp_path / precision, example_input=tokens(2, 8),
            runtime=OpenVINO(precision=precision),
        )  # fmt: skip
        got = d.run(x)
        # reduced precision: close to fp32, but not equal to it (it really ran in it)
        assert 0 < (got - expected).abs().max() < 0.05
        # weights stored as float16: the .bin is about half the f32 one
        assert Path(d.files[1]).stat().st_size < 0.55 * Path(f32.files[1]).stat().st_size
        torch.testing.assert_close(load_deployed(d.path)(x), got, rtol=0, atol=0)


@openvino_only
def test_a_precision_the_cpu_does_not_offer_fails_as_a_runtime_step(tmp_path, monkeypatch):
    from autocompress.runtimes import OpenVINO, _openvino

    monkeypatch.setattr(_openvino, "cpu_precisions", lambda: ("f32",))
    with pytest.raises(TrialFailure, match="precision bf16 is not offered on this CPU") as err:
        deploy(_cnn(), tmp_path / "m", example_input=_image(2), runtime=OpenVINO("bf16"))
    assert err.value.method == "runtime"


# Share of the f32 .bin left after static int8: the weights go to a quarter; BERT's embedding
# tables (a large part of this tiny model) stay float.
BIN_SHARE = {"cnn": 0.4, "bert": 0.75}


@openvino_only
@pytest.mark.parametrize("model_name", ["cnn", "bert"])
def test_openvino_int8_and_low_bit_weights_make_the_file_smaller(tmp_path, model_name):
    make, example, other = MODELS[model_name]
    model, x = make(), other()
    calibration = [example() for _ in range(4)]
    expected = _eager(model, x)
    f32 = deploy(model, tmp_path / "f32", example_input=example(), runtime="openvino")
    static = deploy(
        model, tmp_path / "int8", example_input=example(), runtime="openvino",
        int8=Int8(mode="static"), calibration=calibration,
    )  # fmt: skip
    assert static.kind == "openvino-nncf-int8"
    assert (
        Path(static.files[1]).stat().st_size
        < BIN_SHARE[model_name] * Path(f32.files[1]).stat().st_size
    )
    # the same classes (cnn) or close logits (bert) after int8
    if model_name == "cnn":
        assert (static.run(x).argmax(1) == expected.argmax(1)).float().mean() >= 0.8
    else:
        assert (static.run(x) - expected).abs().max() < 0.1
    torch.testing.assert_close(load_deployed(static.path)(x), static.run(x), rtol=0, atol=0)
    if model_name == "bert":
        note = " ".join(static.notes)
        assert "transformer model type" in note and "SmoothQuant alpha 0.95" in note
        int4 = deploy(
            model, tmp_path / "int4", example_input=example(), runtime="openvino",
            weights=WeightQuantization(4, "group32"),
        )  # fmt: skip
        assert int4.kind == "openvino-int4-weights"
        assert int4.size_bytes < static.size_bytes


@openvino_only
def test_openvino_dynamic_int8_stores_int8_weights(tmp_path):
    model, x = _cnn(), _image(5, 1)
    f32 = deploy(model, tmp_path / "f32", example_input=_image(2), runtime="openvino")
    d = deploy(model, tmp_path / "m", example_input=_image(2), runtime="openvino",
               int8=Int8(mode="dynamic"))  # fmt: skip
    assert d.kind == "openvino-dynamic-int8"
    assert Path(d.files[1]).stat().st_size < 0.4 * Path(f32.files[1]).stat().st_size
    assert (d.run(x).argmax(1) == _eager(model, x).argmax(1)).all()


@pytest.fixture(scope="module")
def facts():
    from autocompress.architecture import model_facts

    return model_facts(_cnn(), _image(2))


SPACE = """
int8:
  enabled: [false, true]
  mode: [static, dynamic]
runtime:
  graph: [plain, fused]
  precision: [f32, bf16, f16]
  int8_preset: [performance, mixed]
  smooth_quant: {low: 0.5, high: 0.95}
"""


def _suggested(
    runtime: str, facts, n: int = 30
) -> list[tuple[Method | None, Method | None, dict[str, Any]]]:
    space = parse_search_space_text(SPACE)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(0))
    found = []
    for _ in range(n):
        trial = study.ask()
        config = space.suggest(trial, facts, runtime=runtime)
        found.append((config.get("runtime"), config.get("int8"), trial.params))
        study.tell(trial, 0.0)
    return found


@openvino_only
def test_the_search_asks_only_what_the_host_offers_and_the_runtime_uses(facts, monkeypatch):
    from autocompress.runtimes import OpenVINO

    monkeypatch.setattr(OpenVINO, "offered", classmethod(lambda cls, p, d="cpu": (
        ("f32", "f16") if p == "precision" else None)))  # fmt: skip
    rows = _suggested("openvino", facts)
    precisions = {r.build().precision for r, _, _ in rows}
    assert precisions == {"f32", "f16"}  # bf16 is never tried on a host without it
    for _settings, int8, params in rows:
        static = getattr(int8, "mode", None) == "static"
        # NNCF's preset only when static int8 runs; SmoothQuant never on a CNN
        assert ("runtime.int8_preset" in params) == static
        assert "runtime.smooth_quant" not in params
        # the int8 method asks OpenVINO for its mode only (ORT's calibration is not asked)
        assert not any(
            k.startswith("int8.") and k not in ("int8.enabled", "int8.mode") for k in params
        )
    space = parse_search_space_text(SPACE)
    assert not_offered(space, "openvino") == [
        "runtime.precision: bf16 not offered by openvino on this CPU; searching f32, f16"
    ]


def test_onnxruntime_asks_to_fuse_only_a_transformer(facts):
    from autocompress.architecture import model_facts

    assert all("runtime.graph" not in params for _, _, params in _suggested("onnxruntime", facts))
    bert_facts = model_facts(bert(), tokens(2, 8))
    rows = _suggested("onnxruntime", bert_facts, n=12)
    assert {settings.build().graph for settings, _, _ in rows} == {"plain", "fused"}


@pytest.mark.parametrize("make", [bert, gpt2], ids=["bert", "gpt2"])
def test_fused_onnx_graphs_keep_the_outputs_and_list_what_was_fused(tmp_path, make):
    from autocompress.runtimes import OnnxRuntime

    model, x = make(), tokens(3, 12, 1)
    d = deploy(model, tmp_path / "m", example_input=tokens(2, 8), runtime=OnnxRuntime("fused"))
    assert d.kind == "onnx-fused-fp32"
    assert "SkipLayerNormalization x4" in " ".join(d.notes)  # two blocks, two norms each
    torch.testing.assert_close(d.run(x), _eager(model, x), rtol=1e-4, atol=1e-4)
    plain = deploy(model, tmp_path / "p", example_input=tokens(2, 8), runtime="onnxruntime")
    assert "fused" not in " ".join(plain.notes)


def test_torch_asks_for_precision_only_without_int8(facts, monkeypatch):
    # A CPU with bfloat16 instructions, so that precision has two choices to ask for.
    monkeypatch.setattr("autocompress.runtimes._torch.cpu_flags", lambda: {"avx512_bf16"})
    for settings, int8, params in _suggested("torch", facts):
        assert ("runtime.precision" in params) == (int8 is None)
        assert settings.runtime == "torch"
        assert "runtime.int8_preset" not in params


def test_runtime_settings_round_trip_through_their_recipe_form():
    settings = RuntimeSettings(runtime="openvino", settings={"precision": "f16"})
    assert settings.params() == {"runtime": "openvino", "precision": "f16"}
    assert RuntimeSettings.from_params(settings.params()) == settings
    assert settings.describe() == "openvino f16"
    with pytest.raises(ValueError, match="has no setting 'smooth_quant'"):
        RuntimeSettings(runtime="torch", settings={"smooth_quant": 0.5})
    with pytest.raises(ValueError, match="precision must be one of"):
        RuntimeSettings(runtime="openvino", settings={"precision": "int3"})


@openvino_only
def test_a_study_on_cpu_openvino_runs_exports_and_applies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text(
        "weights:\n  enabled: [false, true]\n  bits: [8, 4]\n"
        "int8:\n  enabled: [false, true]\n  mode: [static, dynamic]\n"
        "runtime:\n  precision: [f32, bf16]\n"
    )
    url = f"sqlite:///{tmp_path / 's.db'}"
    runner = CliRunner()
    args = ["study", "run", "--study", "ov", "--workload", "tests.conftest:tiny_workload",
            "--space", str(space), "--target", "cpu-openvino", "--n-trials", "4",
            "--batch-size", "8", "--storage", url]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="ov", storage=url)
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(done) >= 4
    for t in done:
        assert t.user_attrs["deployed_kind"].startswith("openvino-")
        assert "openvino" in t.user_attrs["summary"]
    result = runner.invoke(app, ["study", "status", "ov", "--storage", url])
    assert result.exit_code == 0 and "openvino" in result.output
    trial = done[0].number
    result = runner.invoke(
        app,
        ["export", "ov", "--trial", str(trial), "--out", "r.yaml", "--storage", url]
        + ["--workload", "tests.conftest:tiny_workload"],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["apply", "r.yaml", "--out", "deploy", "--workload", "tests.conftest:tiny_workload"]
    )
    assert result.exit_code == 0, result.output
    assert "openvino" in result.output
    xml, bin_ = Path("deploy/model.xml"), Path("deploy/model.bin")
    assert xml.exists() and bin_.exists()
    # the size the apply reports is both files, as the study recorded
    assert done[0].user_attrs["deployed_bytes"] == xml.stat().st_size + bin_.stat().st_size


@openvino_only
@pytest.mark.parametrize(
    "rejected, how",
    [(1, "converted from PyTorch directly"), (2, "quantized with the default model type")],
)
def test_a_transformer_int8_graph_the_cpu_rejects_is_built_another_way(
    tmp_path, monkeypatch, rejected, how
):
    from autocompress.runtimes import OpenVINO

    real = OpenVINO._save_and_compile
    model_types = []

    def compile_rejecting_the_first(self, ov_model, xml, threads, dynamic):
        key = ["nncf", "quantization", "model_type"]
        model_types.append(ov_model.get_rt_info(key).astype(str)
                           if ov_model.has_rt_info(key) else None)  # fmt: skip
        if len(model_types) <= rejected:
            raise RuntimeError(
                "Exception from src/inference/src/cpp/core.cpp:132:\nCheck 'x' failed"
            )
        return real(self, ov_model, xml, threads, dynamic)

    monkeypatch.setattr(OpenVINO, "_save_and_compile", compile_rejecting_the_first)
    model, x = bert(), tokens(3, 12, 1)
    calibration = [tokens(4, 8, s) for s in range(3)]
    d = deploy(model, tmp_path / "m", example_input=tokens(2, 8), runtime="openvino",
               int8=Int8(mode="static"), calibration=calibration)  # fmt: skip
    assert len(model_types) == rejected + 1
    assert model_types[0] == "transformer" and model_types[1] == "transformer"
    if rejected == 2:  # the last way gives up the transformer model type
        assert model_types[2] != "transformer"
    assert d.kind == "openvino-nncf-int8"
    assert f"rejects (Check 'x' failed); {how}" in d.notes[0]
    assert (d.run(x) - _eager(model, x)).abs().max() < 0.1
    # what was measured is what reloads: input names as the export's
    torch.testing.assert_close(load_deployed(d.path)(x), d.run(x), rtol=0, atol=0)


@openvino_only
def test_a_float_graph_the_cpu_rejects_fails_as_the_runtime_with_the_cause(tmp_path, monkeypatch):
    from autocompress.runtimes import OpenVINO

    def reject(self, ov_model, xml, threads, dynamic):
        raise RuntimeError("Exception from src/inference/src/cpp/core.cpp:132:\nno kernel for X")

    monkeypatch.setattr(OpenVINO, "_save_and_compile", reject)
    with pytest.raises(
        TrialFailure, match="compiling the OpenVINO model: RuntimeError: no kernel"
    ) as err:
        deploy(_cnn(), tmp_path / "m", example_input=_image(2), runtime="openvino")
    assert err.value.method == "runtime"


# Whether each runtime keeps 4-bit weights low-bit in its file (TorchScript runs them as float).
KEEPS_LOW_BITS = {"torch": False, "onnxruntime": True, "openvino": True}


@pytest.mark.parametrize("runtime", AVAILABLE)
def test_low_bit_weights_are_said_to_run_as_float_only_where_they_do(tmp_path, runtime):
    from autocompress.objective import _runtime_notes
    from autocompress.pipeline import CompressionConfig

    weights = WeightQuantization(4, "group32")
    d = deploy(bert(), tmp_path / "m", example_input=tokens(2, 8), runtime=runtime,
               weights=weights)  # fmt: skip
    assert d.low_bit_weights is KEEPS_LOW_BITS[runtime]
    notes = _runtime_notes(CompressionConfig.of(weights=weights), d)
    assert bool(notes) is not KEEPS_LOW_BITS[runtime]
    if notes:
        assert notes[0].startswith(f"4-bit weights run as float on {d.kind}")


@pytest.mark.skipif(
    "bf16" not in (RUNTIMES["torch"].offered("precision") or ()), reason="no bf16 on this CPU"
)
@pytest.mark.parametrize("model_name", ["cnn", "bert"])
def test_torch_bf16_runs_in_bfloat16_and_reloads_as_measured(tmp_path, model_name):
    from autocompress.runtimes import TorchRuntime

    make, example, other = MODELS[model_name]
    model, x = make(), other()
    d = deploy(model, tmp_path / "m", example_input=example(), runtime=TorchRuntime("bf16"))
    assert d.kind == "torchscript-bf16" and d.run(x).dtype == torch.float32
    difference = (d.run(x) - _eager(model, x)).abs().max()
    assert 0 < difference < 0.1  # really bfloat16, still close
    torch.testing.assert_close(load_deployed(d.path)(x), d.run(x), rtol=0, atol=0)
