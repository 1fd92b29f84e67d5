"""`edgekit slim`: importance ordering keeps the full-width function, one weight set sliced physically per
width at load time, the sandwich step trains that one set, and bad widths are refused."""
import json

import pytest
import torch

from edgekit.fsutil import sha256_tree
from cli_checks import one_line


@pytest.fixture(scope="session")
def slim_model(digits_arch_model, tmp_path_factory):
    from edgekit.compress.slim import SlimConfig, slim_model

    out = tmp_path_factory.mktemp("slim") / "model"
    return out, slim_model(digits_arch_model, SlimConfig(widths=(0.5, 0.75, 1.0), train_steps=0), out)


def _inputs():
    gen = torch.Generator().manual_seed(3)
    return torch.randn(2, 4, 8, 8, generator=gen), torch.tensor([700.0, 40.0]), torch.randn(2, 16, 64, generator=gen)


def test_each_width_loads_physically_sliced(slim_model, digits_arch_model):
    from edgekit.pipeline import load_pipeline
    from edgekit.structure import unet_macs

    out, report = slim_model
    base = load_pipeline(digits_arch_model).unet
    x = _inputs()
    full_macs = unet_macs(base)
    for width, stream in ((0.5, 32), (0.75, 48), (1.0, 64)):
        unet = load_pipeline(out, width=width).unet
        assert unet.conv_in.weight.shape[0] == stream
        assert unet.down_blocks[1].resnets[0].conv1.weight.shape[0] == 2 * stream
        with torch.no_grad():
            assert unet(*x).sample.shape == (2, 4, 8, 8)
        if width == 0.5:
            assert unet_macs(unet) <= 0.35 * full_macs
    # importance ordering only permutes: untrained, the full width computes what the source computes
    with torch.no_grad():
        a, b = base(*x).sample, load_pipeline(out, width=1.0).unet(*x).sample
    assert float((a - b).norm() / a.norm()) < 1e-2
    assert [row["width"] for row in report["widths"]] == [0.5, 0.75, 1.0]


def test_widths_work_in_generate_and_calibrate(run_cli, slim_model, tmp_path):
    out, _ = slim_model
    for width in ("0.5", "0.75"):
        code, _, err = run_cli("generate", "--model", out, "--width", width, "--prompt", "a photo of a cat",
                               "--steps", "2", "--out", tmp_path / f"w{width}.png")
        assert code == 0, err
    code, _, err = run_cli("calibrate", "--model", out, "--width", "0.5", "--samples", "1", "--steps", "2",
                           "--out", tmp_path / "calib")
    assert code == 0, err


def test_sandwich_step_trains_the_one_weight_set(digits_arch_model):
    """Gradients of a width-0.5 loss reach exactly the prefix of the full-width parameters."""
    from edgekit.compress.distill import SlimmableUNet
    from edgekit.pipeline import load_pipeline

    unet = load_pipeline(digits_arch_model).unet
    slim = SlimmableUNet(unet, (0.5, 1.0))
    outs = slim.module(*_inputs(), [0.5])
    outs[0].square().mean().backward()
    grad = unet.conv_in.weight.grad
    assert grad[:32].abs().sum() > 0 and grad[32:].abs().sum() == 0
    heads_grad = unet.mid_block.attentions[0].transformer_blocks[0].attn1.to_q.weight.grad
    assert heads_grad[:32].abs().sum() > 0 and heads_grad[64:].abs().sum() == 0


def test_slim_training_cli(run_cli, digits_arch_model, tmp_path):
    code, stdout, err = run_cli("slim", "--model", digits_arch_model, "--widths", "0.5,1.0", "--train-steps", "2",
                                "--batch-size", "4", "--out", tmp_path / "slim", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["training"]["steps"] == 2 and report["training"]["processes"] == 1
    assert set(report["training"]["loss"]) == {"0.5", "1"}
    assert json.loads((tmp_path / "slim" / "structure.json").read_text())["widths"] == [0.5, 1.0]


@pytest.mark.parametrize("widths, needles", [
    ("0,1.0", ["--widths 0", "(0, 1]"]),
    ("0.5,1.5", ["--widths 1.5", "(0, 1]"]),
    ("0.5,0.75", ["--widths", "include 1.0"]),
    ("0.05,1.0", ["--widths 0.05", "GroupNorm"]),
])
def test_bad_widths(run_cli, digits_arch_model, tmp_path, widths, needles):
    before = sha256_tree(digits_arch_model)
    code, _, err = run_cli("slim", "--model", digits_arch_model, "--widths", widths, "--out", tmp_path / "out")
    assert code == 2
    one_line(err, *needles)
    assert not (tmp_path / "out").exists()
    assert sha256_tree(digits_arch_model) == before


def test_groupnorm_invalid_width_on_32_groups(run_cli, sd15_reduced, tmp_path):
    code, _, err = run_cli("slim", "--model", sd15_reduced, "--widths", "0.5,1.0", "--out", tmp_path / "out")
    assert code == 2
    one_line(err, "--widths 0.5", "GroupNorm")
    assert not (tmp_path / "out").exists()


def test_width_not_offered_or_not_slimmable(run_cli, slim_model, digits_arch_model, tmp_path):
    out, _ = slim_model
    code, _, err = run_cli("generate", "--model", out, "--width", "0.6", "--prompt", "x", "--out", tmp_path / "a.png")
    assert code == 2
    one_line(err, "--width 0.6", "offers widths 0.5, 0.75, 1")
    code, _, err = run_cli("generate", "--model", digits_arch_model, "--width", "0.5", "--prompt", "x",
                           "--out", tmp_path / "b.png")
    assert code == 2
    one_line(err, "not a slimmable model")


def test_inner_scope_keeps_block_outputs(run_cli, digits_arch_model, tmp_path):
    from edgekit.pipeline import load_pipeline

    code, _, err = run_cli("slim", "--model", digits_arch_model, "--scope", "inner", "--widths", "0.5,1.0",
                           "--out", tmp_path / "inner")
    assert code == 0, err
    unet = load_pipeline(tmp_path / "inner", width=0.5).unet
    assert unet.conv_in.out_channels == 64 and unet.down_blocks[0].resnets[0].conv2.out_channels == 64
    assert unet.down_blocks[0].resnets[0].conv1.out_channels == 32
    assert unet.mid_block.attentions[0].transformer_blocks[0].attn1.heads == 2


def test_guidance_pairs_come_from_the_calibration_halves():
    import numpy as np

    from edgekit.compress.training_rows import guidance_pairs

    ctx = np.arange(4 * 2 * 3, dtype=np.float32).reshape(4, 2, 3)
    rows = {"sample": np.zeros((4, 4, 8, 8), np.float32), "timestep": np.zeros(4, np.float32),
            "encoder_hidden_states": ctx, "is_uncond": np.array([0, 1, 0, 1], np.int8)}
    prompted, empty = guidance_pairs(rows)
    assert list(prompted) == [0, 2]
    assert torch.equal(empty, torch.as_tensor(ctx[1]))
    assert guidance_pairs({k: v for k, v in rows.items() if k != "is_uncond"}) is None
    assert guidance_pairs({**rows, "is_uncond": np.zeros(4, np.int8)}) is None  # guidance 1: no empty half


def test_slim_continues_from_an_earlier_output(run_cli, slim_model, digits_arch_model, tmp_path):
    earlier, _ = slim_model
    code, stdout, err = run_cli("slim", "--model", digits_arch_model, "--init", earlier, "--train-steps", "2",
                                "--batch-size", "2", "--out", tmp_path / "more", "--json")
    assert code == 0, err
    report = json.loads(stdout)
    assert report["training"]["guidance_weight"] == 1.0  # the digits-architecture model samples with guidance
    provenance = json.loads((tmp_path / "more" / "structure.json").read_text())["provenance"]
    assert provenance["continued_from"]["path"] == str(earlier) and provenance["train_steps"] == 2

    code, _, err = run_cli("slim", "--model", digits_arch_model, "--init", earlier, "--widths", "0.5,1.0",
                           "--out", tmp_path / "other")
    assert code == 2
    one_line(err, "--init", "slimmable at [0.5, 0.75, 1.0]")
    assert not (tmp_path / "other").exists()
