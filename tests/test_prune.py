"""`edgekit prune`: physically smaller UNet, structure.json, reload through edgekit, importance from data,
recovery distillation under Accelerate, and bad input (one line, exit 2, nothing written)."""
import json
import shutil

import pytest
import torch

from edgekit.fsutil import sha256_tree
from cli_checks import one_line


@pytest.fixture(scope="session")
def pruned_model(digits_arch_model, tmp_path_factory):
    from edgekit.compress.prune import PruneConfig, prune_model

    out = tmp_path_factory.mktemp("pruned") / "model"
    report = prune_model(digits_arch_model, PruneConfig(ratio=0.5, heads_ratio=0.5, recover_steps=3, batch_size=4),
                         out)
    return out, report


def test_pruned_model_is_smaller_and_reloads(pruned_model, digits_arch_model):
    from edgekit.pipeline import load_pipeline
    from edgekit.structure import Structure

    out, report = pruned_model
    structure = Structure.load(out)
    assert structure.resnets["down_blocks.0.resnets.0"] == 32 and not structure.slimmable
    assert set(structure.attention_heads.values()) == {2}
    unet = load_pipeline(out).unet
    assert tuple(unet.down_blocks[0].resnets[0].conv1.weight.shape) == (32, 64, 3, 3)
    assert unet.mid_block.attentions[0].transformer_blocks[0].attn1.heads == 2
    assert report["params"]["after"] < 0.6 * report["params"]["before"]
    assert report["unet_macs"]["after"] < 0.6 * report["unet_macs"]["before"]
    assert report["reload_relative_error"] < 1e-2
    # recovery ran under Accelerate, single process on this CPU, and reported its losses
    assert report["recovery"]["processes"] == 1 and report["recovery"]["steps"] == 3
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size < \
        (digits_arch_model / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size


def test_pruned_model_generates_and_calibrates(run_cli, pruned_model, tmp_path):
    out, _ = pruned_model
    code, stdout, err = run_cli("generate", "--model", out, "--prompt", "a photo of a cat", "--steps", "2",
                                "--out", tmp_path / "x.png")
    assert code == 0, err
    code, _, err = run_cli("calibrate", "--model", out, "--samples", "1", "--steps", "2", "--out", tmp_path / "calib")
    assert code == 0, err
    from edgekit.calibration import CalibrationSet

    rows = CalibrationSet.open(tmp_path / "calib", out).load("unet")
    assert rows["sample"].shape[1:] == (4, 8, 8)


def test_data_importance_from_calibration(run_cli, digits_arch_model, tmp_path):
    code, _, err = run_cli("calibrate", "--model", digits_arch_model, "--samples", "2", "--steps", "2",
                           "--out", tmp_path / "calib")
    assert code == 0, err
    for method in ("activation", "taylor"):
        code, stdout, err = run_cli("prune", "--model", digits_arch_model, "--ratio", "0.25", "--importance", method,
                                    "--calib", tmp_path / "calib", "--out", tmp_path / method, "--json")
        assert code == 0, err
        report = json.loads(stdout)
        assert report["config"]["importance"] == method
        assert report["structure"]["resnets"]["down_blocks.0.resnets.0"] == 48


def test_importance_picks_the_channels_that_matter():
    """Zeroing half of a resnet's inner channels: every criterion must rank them last."""
    from diffusers import UNet2DConditionModel

    from edgekit.compress.importance import importance_scores
    from edgekit.zoo.tiny_digits.recipe import UNET_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**UNET_CONFIG).eval()
    res = unet.down_blocks[0].resnets[0]
    dead = torch.arange(0, 64, 2)
    with torch.no_grad():
        res.conv2.weight[:, dead] = 0.0
        res.conv1.weight[dead] *= 0.01
    rows = {"sample": torch.randn(8, 4, 8, 8).numpy(), "timestep": torch.randint(0, 1000, (8,)).numpy(),
            "encoder_hidden_states": torch.randn(8, 16, 64).numpy()}
    for method in ("l1", "activation", "taylor"):
        score = importance_scores(unet, method, rows)["resnets:down_blocks.0.resnets.0"]
        assert set(torch.argsort(score)[:32].tolist()) == set(dead.tolist()), method


def test_recovery_reduces_the_distillation_loss(digits_arch_model):
    from edgekit.compress.distill import frozen_copy, recover
    from edgekit.compress.prune import PruneConfig, prune_unet
    from edgekit.pipeline import load_pipeline

    unet = load_pipeline(digits_arch_model).unet
    gen = torch.Generator().manual_seed(0)
    rows = {"sample": torch.randn(16, 4, 8, 8, generator=gen).numpy(), "timestep": torch.randint(0, 1000, (16,), generator=gen).numpy(),
            "encoder_hidden_states": torch.randn(16, 16, 64, generator=gen).numpy()}
    pruned, _ = prune_unet(unet, PruneConfig(ratio=0.5))
    report = recover(pruned, frozen_copy(unet), rows, steps=12, lr=1e-3, batch_size=16)
    assert report["output_loss_last"] < 0.8 * report["output_loss_first"]


@pytest.mark.parametrize("args, needles", [
    (["--ratio", "0"], ["--ratio 0.0", "(0, 1)"]),
    (["--ratio", "1"], ["--ratio 1.0", "(0, 1)"]),
    (["--ratio", "0.5", "--heads-ratio", "0.9"], ["--heads-ratio 0.9", "no head"]),
    (["--ratio", "0.5", "--importance", "taylor", "--calib", "/nonexistent/calib"], ["--calib", "no such directory"]),
])
def test_bad_prune_arguments(run_cli, digits_arch_model, tmp_path, args, needles):
    before = sha256_tree(digits_arch_model)
    code, _, err = run_cli("prune", "--model", digits_arch_model, *args, "--out", tmp_path / "out")
    assert code == 2
    one_line(err, *needles)
    assert not (tmp_path / "out").exists()
    assert sha256_tree(digits_arch_model) == before


def test_model_without_attention_is_refused(run_cli, digits_arch_model, tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    plain = tmp_path / "plain"
    pipe = StableDiffusionPipeline.from_pretrained(digits_arch_model, safety_checker=None, requires_safety_checker=False)
    pipe.register_modules(unet=UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type=None, layers_per_block=1,
        cross_attention_dim=64, norm_num_groups=8))
    pipe.save_pretrained(plain, safe_serialization=True)
    code, _, err = run_cli("prune", "--model", plain, "--ratio", "0.5", "--out", tmp_path / "out")
    assert code == 2
    one_line(err, "no attention layers")
    assert not (tmp_path / "out").exists()
    code, _, err = run_cli("prune", "--model", plain, "--ratio", "0.5", "--heads-ratio", "0", "--out", tmp_path / "out")
    assert code == 0, err


def test_structure_that_does_not_match_weights(run_cli, pruned_model, tmp_path):
    out, _ = pruned_model
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    data = json.loads((broken / "structure.json").read_text())
    data["resnets"]["down_blocks.0.resnets.0"] = 40
    (broken / "structure.json").write_text(json.dumps(data))
    code, _, err = run_cli("generate", "--model", broken, "--prompt", "x", "--out", tmp_path / "x.png")
    assert code == 2
    one_line(err, "structure.json", "does not match the UNet weights")
    assert not (tmp_path / "x.png").exists()
