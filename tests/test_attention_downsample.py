"""Key/value token downsampling at the UNet's highest-resolution self-attention (edgekit.targets.attention_downsample):
the processor is diffusers' attention when nothing is pooled and exact where pooling loses nothing; the export
carries it into the graph (checked against the same torch model, recorded in the manifest) and changes the
UNet's output; bad factors are refused before anything is written."""
import collections
import json

import numpy as np
import onnx
import pytest
import torch

from cli_checks import one_line

SLIM = "edgekit/zoo/tiny_digits/slim"


@pytest.fixture(scope="module")
def unet():
    from edgekit.pipeline import load_pipeline

    return load_pipeline(SLIM).unet.eval()


def _inputs(unet, seed=0):
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    return (torch.randn(2, unet.config.in_channels, size, size, generator=gen), torch.tensor([900.0, 20.0]),
            torch.randn(2, 16, unet.config.cross_attention_dim, generator=gen))


def test_processor_without_pooling_is_diffusers_attention(unet):
    from edgekit.targets.attention_downsample import PooledKeysAttnProcessor, self_attentions

    name, attn = self_attentions(unet, 1)[0]
    x = torch.randn(2, 64, attn.to_q.in_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = attn(x)
        got = PooledKeysAttnProcessor(1)(attn, x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), name


def test_pooling_is_exact_when_each_patch_holds_one_token(unet):
    """Tokens equal within every 2x2 patch: the full attention sees each pooled key four times, which the softmax
    normalises away, so pooled keys give the same output (and a different input shows pooling changes it)."""
    from edgekit.targets.attention_downsample import PooledKeysAttnProcessor, self_attentions

    _, attn = self_attentions(unet, 1)[0]
    channels = attn.to_q.in_features
    coarse = torch.randn(2, channels, 4, 4, generator=torch.Generator().manual_seed(2))
    x = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="nearest").flatten(2).transpose(1, 2)
    with torch.no_grad():
        assert torch.allclose(PooledKeysAttnProcessor(2)(attn, x), attn(x), rtol=1e-5, atol=1e-6)
        fine = torch.randn(2, 64, channels, generator=torch.Generator().manual_seed(3))
        assert not torch.allclose(PooledKeysAttnProcessor(2)(attn, fine), attn(fine), rtol=1e-3, atol=1e-4)


def test_only_the_highest_resolution_self_attention_is_patched(unet):
    import copy

    from edgekit.targets.attention_downsample import PooledKeysAttnProcessor, downsample_keys

    patched = copy.deepcopy(unet)
    record = downsample_keys(patched, 2, 1)
    assert record["attentions"] and all(".attn1" in n for n in record["attentions"])
    assert all(n.startswith(("down_blocks.0.", f"up_blocks.{len(unet.up_blocks) - 1}.")) for n in record["attentions"])
    pooled = {n for n, m in patched.named_modules() if isinstance(getattr(m, "processor", None), PooledKeysAttnProcessor)}
    assert pooled == set(record["attentions"])
    with torch.no_grad():
        diff = (patched(*_inputs(unet)).sample - unet(*_inputs(unet)).sample).abs().max()
    assert 0 < float(diff)  # an approximation: the output moves


def test_export_carries_it_into_the_graph(run_cli, tmp_path):
    out = tmp_path / "ds"
    code, _, err = run_cli("export", "--model", SLIM, "--target", "ort-web", "--precision", "fp32",
                           "--attention-downsample", "2", "--out", out)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["components"]["unet"]["widths"]["1.00"]
    assert entry["attention_downsample"]["factor"] == 2 and len(entry["attention_downsample"]["attentions"]) >= 2
    assert manifest["profile"]["attention_downsample"] == 2
    ops = collections.Counter(n.op_type for n in onnx.load(str(out / entry["file"])).graph.node)
    assert ops["AveragePool"] == len(entry["attention_downsample"]["attentions"])
    assert ops["MultiHeadAttention"] > 0  # the fused attention takes the shorter keys too
    checks = manifest["verification"]["unet"]["widths"]["1.00"]["checks"]
    assert all(c["rel_err"] < 1e-4 for c in checks if "rel_err" in c)  # against the same torch model


@pytest.mark.parametrize("value, needle", [("0", "1..8"), ("3", "not divisible"), ("x", "invalid int")])
def test_bad_factor_is_refused_before_writing(run_cli, tmp_path, value, needle):
    out = tmp_path / "ds"
    code, _, err = run_cli("export", "--model", SLIM, "--target", "ort-web", "--precision", "fp32",
                           "--attention-downsample", value, "--out", out)
    assert code == 2
    if value != "x":
        one_line(err, "attention", needle)
    else:
        assert needle in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_profile_field_is_checked():
    from edgekit.errors import InputError
    from edgekit.profiles import shipped_profile

    profile = shipped_profile("web-ort")
    assert profile.attention_downsample == 1
    with pytest.raises(InputError, match="attention_downsample"):
        type(profile).from_dict({**profile.to_dict(), "attention_downsample": -2}, where="p.yaml")


def test_package_recipe_carries_it_to_every_bundle_profile(tmp_path):
    """The package recipe field round-trips through report.json's config and sets every target's profile; the
    ort-web INT8 then quantizes inside its export (the quantize stage's graph has no pooled keys)."""
    from edgekit.package import PackageConfig, plan

    config = PackageConfig.from_dict({"targets": ["ort-web", "tflite"], "attention_downsample": 2})
    assert PackageConfig.from_dict(config.to_dict()) == config
    p = plan(SLIM, config, tmp_path / "out")
    assert {name: prof.attention_downsample for name, prof in p.profiles.items()} == {"ort-web": 2, "tflite": 2}
    assert not (tmp_path / "out").exists()


def test_package_flag_refuses_a_bad_factor(run_cli, tmp_path):
    code, _, err = run_cli("package", "--attention-downsample", "0", "--out", tmp_path / "p")
    assert code == 2
    one_line(err, "attention", "1..8")
    assert not (tmp_path / "p").exists()
