"""Export-time rewrites compute the same function as the modules they replace, and never touch the
user's model."""
import torch
from torch import nn
from torch.nn import functional as F

from edgekit.targets.patches import (DecomposedGroupNorm, decompose_group_norm, erf_free_gelu, erf_polynomial,
                                     onnx2tf_friendly)


def test_erf_polynomial_matches_torch_erf():
    x = torch.linspace(-8, 8, 20001, dtype=torch.float64)
    assert torch.max(torch.abs(erf_polynomial(x) - torch.erf(x))) < 2e-7


def test_group_norm_decomposition_matches_on_its_own():
    torch.manual_seed(0)
    norm = nn.GroupNorm(8, 32, eps=1e-6)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, 32, 5, 7)
    torch.testing.assert_close(DecomposedGroupNorm(norm)(x), norm(x), rtol=1e-5, atol=1e-5)


def test_patched_unet_matches_and_the_original_is_untouched(sd15_reduced):
    from edgekit.components import component_spec, example_inputs, export_module, run_torch
    from edgekit.loader import open_model
    from edgekit.quality import relative_error

    pipe = open_model(sd15_reduced)
    module = export_module(pipe, "unet")
    spec = component_spec(pipe, "unet")
    inputs = example_inputs(pipe, "unet", batch=2, seed=3)
    reference = run_torch(module, spec, inputs)
    groups = sum(isinstance(m, nn.GroupNorm) for m in module.modules())
    original_gelu = F.gelu
    with onnx2tf_friendly(module) as patched:
        assert F.gelu is not original_gelu
        assert not any(isinstance(m, nn.GroupNorm) for m in patched.modules())
        out = run_torch(patched, spec, inputs)
    assert relative_error(out, reference) < 1e-5
    assert sum(isinstance(m, nn.GroupNorm) for m in module.modules()) == groups > 0
    assert F.gelu is original_gelu
    torch.testing.assert_close(torch.from_numpy(run_torch(module, spec, inputs)), torch.from_numpy(reference))


def test_gelu_context_restores_on_error():
    original = F.gelu
    try:
        with erf_free_gelu():
            raise RuntimeError("conversion failed")
    except RuntimeError:
        pass
    assert F.gelu is original
    x = torch.linspace(-6, 6, 1001)
    with erf_free_gelu():
        patched = F.gelu(x)
    torch.testing.assert_close(patched, original(x), rtol=1e-6, atol=1e-6)
    assert decompose_group_norm(nn.Sequential(nn.GroupNorm(2, 4)))[0].__class__ is DecomposedGroupNorm
