"""Tests for the packed on-disk artifact format and fake quantization."""

from __future__ import annotations

import math
import struct

import pytest
import torch
from torch import nn

from autocompress.artifact import (
    QUANTIZABLE_BITS,
    fake_quantize,
    load_packed,
    save_packed,
)


def _tiny_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)
    )
    model.train()
    model(torch.randn(8, 3, 6, 6))  # non-trivial BatchNorm running stats
    return model.eval()


@pytest.mark.parametrize("granularity", ["per_channel", "per_tensor"])
@pytest.mark.parametrize("bits", QUANTIZABLE_BITS)
def test_round_trip_matches_fake_quantize(tmp_path, bits, granularity):
    model = _tiny_model()
    sd = model.state_dict()
    weight_bits = {"0.weight": bits, "1.weight": bits, "4.weight": bits}  # 4-D, 1-D, 2-D
    path = tmp_path / "m.acpk"
    size = save_packed(
        path,
        sd,
        plan=weight_bits,
        granularity=granularity,
        metadata={"bits": bits, "note": "x"},
    )
    assert size == path.stat().st_size
    loaded, meta = load_packed(path)
    assert meta == {"bits": bits, "note": "x"}
    assert list(loaded) == list(sd)
    expected = {
        k: fake_quantize(v, bits, granularity) if k in weight_bits else v for k, v in sd.items()
    }
    for k, v in expected.items():
        assert loaded[k].dtype == v.dtype, k
        assert torch.equal(loaded[k], v), k
        if k in weight_bits:  # bit-for-bit, including the sign of zeros
            assert torch.equal(loaded[k].view(torch.int32), v.view(torch.int32)), k
    assert loaded["1.num_batches_tracked"].dtype == torch.int64
    in_memory, from_disk = _tiny_model(), _tiny_model()
    in_memory.load_state_dict(expected)
    from_disk.load_state_dict(loaded)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(in_memory(x), from_disk(x))
    if bits < 16:
        assert not torch.equal(loaded["4.weight"], sd["4.weight"])


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 3, 3), (0, 4), (4, 0), (1,), ()])
@pytest.mark.parametrize("bits", [3, 5, 7])
def test_odd_shapes_round_trip(tmp_path, shape, bits):
    torch.manual_seed(1)
    w = torch.randn(shape)
    for granularity in ("per_channel", "per_tensor"):
        save_packed(tmp_path / "w.acpk", {"w": w}, plan={"w": bits}, granularity=granularity)
        loaded, _ = load_packed(tmp_path / "w.acpk")
        assert loaded["w"].shape == w.shape
        assert torch.equal(loaded["w"], fake_quantize(w, bits, granularity))


def test_file_size_is_k_over_32(tmp_path):
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10)
    )
    sd = model.state_dict()
    with torch.no_grad():  # magnitudes in [0.5, 1] * sign: no zero codes, so no sparse encoding
        for k, v in sd.items():
            if k.endswith("weight"):
                v.copy_(torch.sign(torch.randn_like(v)) * torch.empty_like(v).uniform_(0.5, 1.0))
    weights = {k: v for k, v in sd.items() if k.endswith("weight")}
    other_bytes = sum(v.numel() * 4 for k, v in sd.items() if k not in weights)
    n_weights = sum(v.numel() for v in weights.values())
    assert 90_000 < n_weights + other_bytes // 4 < 110_000
    sizes = {}
    for k in (2, 4, 8, 16, 32):
        size = save_packed(
            tmp_path / f"m{k}.acpk",
            sd,
            plan=dict.fromkeys(weights, k),
            entropy_coding=False,
        )
        scales = sum(v.shape[0] * 4 for v in weights.values()) if k <= 8 else 0
        payload = sum(math.ceil(v.numel() * k / 8) for v in weights.values())
        ideal = n_weights * 4 * k / 32
        assert payload + scales + other_bytes <= size <= payload + scales + other_bytes + 2048
        assert size <= ideal * 1.03 + other_bytes + scales + 2048
        sizes[k] = size
    print("packed sizes (bytes) for", n_weights, "weights:", sizes)
    assert sizes[2] < sizes[4] < sizes[8] < sizes[16] < sizes[32]


def test_entropy_coding_shrinks_low_entropy_weights_and_loads_the_same(tmp_path):
    torch.manual_seed(4)
    w = torch.randn(128, 256) * 0.01
    w[:, 0] = 1.0  # one large weight per channel: the other codes crowd around zero
    sd = {"w": w}
    raw = save_packed(tmp_path / "raw", sd, plan={"w": 8}, entropy_coding=False)
    coded = save_packed(tmp_path / "coded", sd, plan={"w": 8})
    assert coded < raw * 0.8
    assert torch.equal(
        load_packed(tmp_path / "raw")[0]["w"], load_packed(tmp_path / "coded")[0]["w"]
    )


def test_sparse_is_smaller_and_exact(tmp_path):
    torch.manual_seed(3)
    w = torch.randn(64, 128)
    w[torch.rand_like(w) < 0.9] = 0.0
    dense_bytes = math.ceil(w.numel() * 8 / 8) + 64 * 4
    size = save_packed(tmp_path / "s.acpk", {"w": w}, plan={"w": 8})
    assert size < dense_bytes
    loaded, _ = load_packed(tmp_path / "s.acpk")
    assert torch.equal(loaded["w"], fake_quantize(w, 8, "per_channel"))
    assert (loaded["w"][w == 0] == 0).all()
    nnz = int((loaded["w"] != 0).sum())
    assert size <= math.ceil(w.numel() / 8) + nnz + 64 * 4 + 1024  # bitmap + nonzero codes
    for bits in (16, 32):  # sparse float encodings keep exact values
        save_packed(tmp_path / "f.acpk", {"w": w}, plan={"w": bits})
        assert (tmp_path / "f.acpk").stat().st_size < w.numel() * bits / 8
        loaded, _ = load_packed(tmp_path / "f.acpk")
        assert torch.equal(loaded["w"], fake_quantize(w, bits, "per_channel"))


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_zeros_stay_zero_and_no_nan(bits):
    w = torch.randn(6, 10)
    w[:, ::3] = 0.0
    w[2] = 0.0  # an all-zero channel
    for granularity in ("per_channel", "per_tensor"):
        q = fake_quantize(w, bits, granularity)
        assert q.dtype == torch.float32
        assert not torch.isnan(q).any()
        assert (q[w == 0] == 0).all()
        assert (q[2] == 0).all()
    assert torch.equal(fake_quantize(torch.zeros(3, 4), bits, "per_channel"), torch.zeros(3, 4))


def test_fake_quantize_grid_and_validation():
    w = torch.linspace(-1, 1, 101).reshape(1, -1)
    q = fake_quantize(w, 3, "per_tensor")  # qmax 3: 7 levels, max |w| kept
    assert q.unique().numel() == 7 and q.abs().max() == 1.0
    assert torch.equal(fake_quantize(w, 32, "per_channel"), w)
    with pytest.raises(ValueError, match="bits"):
        fake_quantize(w, 1, "per_tensor")
    with pytest.raises(ValueError, match="granularity"):
        fake_quantize(w, 4, "per_row")
    with pytest.raises(ValueError):
        save_packed("unused", {"w": w}, plan={"missing": 4})


def test_bad_files_raise_value_error_naming_path(tmp_path):
    good = tmp_path / "good.acpk"
    save_packed(good, {"w": torch.randn(16, 16), "b": torch.randn(16)}, plan={"w": 4})
    data = good.read_bytes()
    cases = {
        "magic.acpk": b"NOPE" + data[4:],
        "version.acpk": data[:4] + bytes([99]) + data[5:],
        "short.acpk": data[:6],
        "header.acpk": data[: struct.calcsize("<4sBI") + 3],
        "blob.acpk": data[:-10],
        "empty.acpk": b"",
    }
    for name, content in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        with pytest.raises(ValueError) as info:
            load_packed(bad)
        assert str(bad) in str(info.value), name
    assert "version" in _message(tmp_path / "version.acpk")
    assert "magic" in _message(tmp_path / "magic.acpk")


def _message(path) -> str:
    with pytest.raises(ValueError) as info:
        load_packed(path)
    return str(info.value)


@pytest.mark.parametrize("codec", ["zlib", "lzma"])
@pytest.mark.parametrize("byte_codes", [False, True])
def test_every_codec_and_layout_loads_back_exactly(tmp_path, monkeypatch, codec, byte_codes):
    import autocompress.artifact as artifact

    torch.manual_seed(5)
    w = torch.randn(128, 400) * (torch.rand(128, 400) > 0.8)  # sparse: masks are stored too
    sd = {"w": w, "b": torch.randn(64)}
    expected = fake_quantize(w, 3, "per_channel")
    monkeypatch.setattr(artifact, "_COMPRESSORS", {codec: artifact._COMPRESSORS[codec]})
    real_layout = artifact._layout
    monkeypatch.setattr(  # offer only one layout, so this codec and layout are what is written
        artifact,
        "_layout",
        lambda s, b, g, byte_codes=False, forced=byte_codes: real_layout(s, b, g, forced),
    )
    save_packed(tmp_path / "m", sd, plan={"w": 3})
    header = _header(tmp_path / "m")
    assert header["blob_codec"] == codec
    assert header["tensors"][0]["layout"] == ("bytes" if byte_codes else "packed")
    state, _ = load_packed(tmp_path / "m")
    assert torch.equal(state["w"], expected) and torch.equal(state["b"], sd["b"])


def test_low_bit_codes_entropy_code_smaller_one_per_byte(tmp_path):
    """Bit-packed 3-bit codes hide their symbols from a byte-wise coder; bytes do not."""
    torch.manual_seed(6)
    w = torch.randn(300, 784) * (torch.rand(300, 784) > 0.92)  # Deep Compression's LeNet fc1
    packed_only = save_packed(tmp_path / "a", {"w": w}, plan={"w": 3}, entropy_coding=False)
    coded = save_packed(tmp_path / "b", {"w": w}, plan={"w": 3})
    assert coded < 0.8 * packed_only
    assert _header(tmp_path / "b")["tensors"][0]["layout"] == "bytes"
    assert torch.equal(load_packed(tmp_path / "b")[0]["w"], fake_quantize(w, 3, "per_channel"))


def test_corrupt_lzma_blob_is_a_clear_error(tmp_path, monkeypatch):
    import autocompress.artifact as artifact

    monkeypatch.setattr(artifact, "_COMPRESSORS", {"lzma": artifact._COMPRESSORS["lzma"]})
    path = tmp_path / "m"
    save_packed(path, {"w": torch.zeros(64, 64)}, plan={"w": 4})
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_packed(path)


def _header(path) -> dict:
    import json
    import zlib

    from autocompress.artifact import _PREFIX

    data = open(path, "rb").read()
    _, _, length = _PREFIX.unpack_from(data)
    return json.loads(zlib.decompress(data[_PREFIX.size : _PREFIX.size + length]))


@pytest.mark.parametrize("granularity", ["group32", "group64", "group128"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_group_granularity_round_trips_and_scales_per_group(tmp_path, bits, granularity):
    from autocompress.grid import QuantSpec, absmax_scale, scale_shape

    torch.manual_seed(0)
    w = torch.randn(24, 300)  # 300 features: the last group is short
    spec = QuantSpec(bits, granularity)
    group = spec.group_size
    assert scale_shape(w.shape, spec) == [24, math.ceil(300 / group)]
    w[3, :group] *= 50  # one loud group must not coarsen the others of its row
    fq = fake_quantize(w, spec)
    scale = absmax_scale(w, spec)
    assert torch.allclose(scale[3, 1], w[3, group : 2 * group].abs().max() / spec.qmax)
    assert scale[3, 0] > 10 * scale[3, 1:].max()
    assert (fq[3, group:] - w[3, group:]).abs().max() <= scale[3, 1:].max() / 2 + 1e-6
    save_packed(tmp_path / "g.acpk", {"w": w}, plan={"w": spec})
    state, _ = load_packed(tmp_path / "g.acpk")
    assert torch.equal(state["w"], fq)


def test_channel_axis_one_scales_columns(tmp_path):
    """transformers' Conv1D stores [in, out]: its output channels are columns."""
    from autocompress.grid import QuantSpec, absmax_scale

    torch.manual_seed(0)
    w = torch.randn(16, 8)
    w[:, 2] *= 100
    spec = QuantSpec(4, "per_channel", channel_axis=1)
    scale = absmax_scale(w, spec)
    assert scale.shape == (8,)
    assert torch.allclose(scale, w.abs().amax(dim=0) / 7)
    save_packed(tmp_path / "c.acpk", {"w": w}, plan={"w": spec})
    assert torch.equal(load_packed(tmp_path / "c.acpk")[0]["w"], fake_quantize(w, spec))


def test_given_scales_store_exactly_those_codes(tmp_path):
    """A weight already on a grid (e.g. after GPTQ) is stored with that grid's scale."""
    from autocompress.grid import QuantSpec, codes_for, dequantize

    torch.manual_seed(0)
    spec = QuantSpec(4, "group32")
    scale = torch.rand(8, 2) + 0.1  # not the absmax scale of the codes below
    codes = torch.randint(-5, 6, (8, 64), dtype=torch.int32)
    w = dequantize(codes, scale, spec)
    assert torch.equal(codes_for(w, scale, spec), codes)
    save_packed(tmp_path / "s.acpk", {"w": w}, plan={"w": spec}, scales={"w": scale})
    assert torch.equal(load_packed(tmp_path / "s.acpk")[0]["w"], w)


def test_tied_tensors_are_stored_once(tmp_path):
    emb = torch.randn(500, 64)
    tied = {"embed.weight": emb, "head.weight": emb, "bias": torch.zeros(500)}
    untied = {"embed.weight": emb, "head.weight": emb.clone(), "bias": torch.zeros(500)}
    a = save_packed(tmp_path / "a", tied, plan={}, entropy_coding=False)
    b = save_packed(tmp_path / "b", untied, plan={}, entropy_coding=False)
    assert b - a >= emb.numel() * 4 * 0.99
    state, _ = load_packed(tmp_path / "a")
    assert torch.equal(state["head.weight"], emb)
    assert state["head.weight"] is state["embed.weight"]
