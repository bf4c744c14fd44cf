"""CUDA targets: skip cleanly without a GPU (marker ``gpu``, excluded from the default run)."""

import pytest
import torch

from autocompress.deploy import deploy
from autocompress.errors import AutocompressError
from autocompress.study import Target

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")
def test_cuda_target_without_gpu_is_a_clear_error():
    with pytest.raises(AutocompressError, match="no CUDA GPU that PyTorch can see"):
        Target(device="cuda")


@pytest.mark.gpu
@needs_gpu
def test_torchscript_on_cuda_matches_cpu(tiny, tmp_path):
    d = deploy(tiny.model, tmp_path / "m", example_input=tiny.example_input, device="cuda")
    assert d.device == "cuda" and d.synchronize() is torch.cuda.synchronize
    x = tiny.val.x[:16]
    with torch.inference_mode():
        assert torch.allclose(d.run(x), tiny.model(x), atol=1e-4)
