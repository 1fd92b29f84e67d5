"""Every command works on any local SD-1.x-style directory: here SD-1.5's architecture at reduced width."""
import json

from edgekit.pipeline import check_model_dir, load_pipeline


def test_sd15_architecture_loads(sd15_reduced):
    assert check_model_dir(sd15_reduced) == sd15_reduced.resolve()
    pipe = load_pipeline(sd15_reduced)
    assert [type(b).__name__ for b in pipe.unet.down_blocks] == [
        "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert pipe.vae_scale_factor == 8
    assert pipe.tokenizer.model_max_length == 77
    assert type(pipe.scheduler).__name__ == "PNDMScheduler"


def test_generate_and_calibrate_cli_on_sd15(run_cli, sd15_reduced, tmp_path):
    png = tmp_path / "img.png"
    code, stdout, err = run_cli("generate", "--model", sd15_reduced, "--prompt", "a photo of a cat",
                                "--steps", "2", "--out", png, "--json")
    assert code == 0, err
    assert json.loads(stdout)["size"] == [64, 64]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a cat\nan astronaut riding a horse\n")
    code, stdout, err = run_cli("calibrate", "--model", sd15_reduced, "--prompts", prompts, "--steps", "2",
                                "--out", tmp_path / "calib", "--json")
    assert code == 0, err
    meta = json.loads((tmp_path / "calib" / "meta.json").read_text())
    assert meta["components"]["unet"]["inputs"]["encoder_hidden_states"]["shape"] == [77, 64]
    assert meta["components"]["unet"]["rows_seen"] >= 2 * 2 * 2
    assert meta["components"]["vae_decoder"]["inputs"]["latent_sample"]["shape"] == [4, 8, 8]
