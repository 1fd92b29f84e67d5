"""The calibration feed holds exactly what the pipeline fed each component."""
import json

import numpy as np
import pytest
import torch

from edgekit.calibration import CalibrationConfig, CalibrationSet, Reservoir, capture, read_prompts
from edgekit.errors import CalibrationError, InputError
from edgekit.pipeline import generate


@pytest.fixture(scope="module")
def calib(default_pipe, default_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("calib")
    config = CalibrationConfig(prompts=("a handwritten digit two", "handwritten 5", "a handwritten digit nine"),
                               steps=5, guidance_scale=4.0, seed=11,
                               max_rows={"text_encoder": 64, "unet": 24, "vae_decoder": 64}, batch_size=2)
    meta = capture(default_pipe, config, out, default_model)
    return out, meta, config


def test_rows_and_shapes(calib):
    out, meta, _ = calib
    comps = meta["components"]
    assert comps["text_encoder"]["rows"] == 6  # 3 prompts x (conditional + unconditional)
    assert comps["unet"]["rows_seen"] == 3 * 5 * 2  # every step, guidance batch of two per image
    assert comps["unet"]["rows"] == 24  # bounded by the reservoir
    assert comps["vae_decoder"]["rows"] == 3
    assert meta["width"] == 1.0  # quantizers refuse rows captured at another width
    assert comps["unet"]["inputs"]["sample"]["shape"] == [4, 8, 8]
    assert comps["unet"]["inputs"]["encoder_hidden_states"]["shape"] == [16, 64]
    assert comps["text_encoder"]["inputs"]["input_ids"] == {"shape": [16], "dtype": "int64"}
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["model"]["sha256"] == meta["model"]["sha256"]


def test_unet_rows_cover_both_guidance_halves_and_many_steps(calib, default_model):
    out, _, _ = calib
    rows = CalibrationSet.open(out, default_model).load("unet")
    assert set(rows["is_uncond"].tolist()) == {0, 1}
    assert len(set(rows["step_index"].tolist())) >= 3
    assert len(set(rows["timestep"].tolist())) >= 3


def test_captured_latents_decode_to_the_generated_images(calib, default_pipe):
    """Replay: the VAE rows, decoded, are the pipeline's own images (same seeds)."""
    out, _, config = calib
    rows = CalibrationSet.open(out).load("vae_decoder")
    images = generate(default_pipe, list(config.prompts), [11, 12, 13], config.steps, config.guidance_scale)
    with torch.no_grad():
        decoded = default_pipe.vae.decode(torch.from_numpy(rows["latent_sample"])).sample
    decoded = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(decoded, images, atol=1e-4)


def test_captured_text_rows_are_the_prompt_tokens(calib, default_pipe):
    out, _, config = calib
    ids = CalibrationSet.open(out).load("text_encoder")["input_ids"]
    expected = default_pipe.tokenizer(list(config.prompts[:2]), padding="max_length", max_length=16,
                                      truncation=True).input_ids
    assert ids.tolist()[:2] == expected
    empty = default_pipe.tokenizer([""], padding="max_length", max_length=16).input_ids[0]
    assert empty in ids.tolist()


def test_open_rejects_a_calibration_of_another_model(calib, sd15_reduced):
    out, _, _ = calib
    with pytest.raises(CalibrationError, match="another model"):
        CalibrationSet.open(out, sd15_reduced)


def test_open_detects_a_changed_shard(calib, tmp_path):
    import shutil

    out, _, _ = calib
    copy = tmp_path / "calib"
    shutil.copytree(out, copy)
    shard = copy / "unet" / "shard_00000.npz"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CalibrationError, match="checksum"):
        CalibrationSet.open(copy).load("unet")
    with pytest.raises(CalibrationError, match="meta.json missing"):
        CalibrationSet.open(tmp_path)


def test_reservoir_is_uniform_and_bounded():
    rng = np.random.default_rng(0)
    counts = np.zeros(100)
    for _ in range(400):
        r = Reservoir(10, rng)
        for i in range(100):
            r.offer({"v": np.int64(i), "order": np.int64(i)})
        kept = r.stacked()["v"]
        assert len(kept) == 10 and list(kept) == sorted(kept)
        counts[kept] += 1
    assert counts.min() > 10 and counts.max() < 80  # expected 40 each


def test_reservoir_on_disk_keeps_the_same_rows_and_none_in_memory(tmp_path):
    """The spilled reservoir picks exactly the rows the in-memory one picks (same seed), holds none of them
    in memory, one file per slot, and reads them back in stream order a shard at a time."""
    memory = Reservoir(7, np.random.default_rng(5))
    disk = Reservoir(7, np.random.default_rng(5), spill_dir=tmp_path / "spill")
    for i in range(50):
        row = {"x": np.full((3, 2), i, dtype=np.float32), "order": np.int64(i)}
        memory.offer(row)
        disk.offer(row)
    assert disk.rows == [] and len(disk) == 7 and disk.seen == 50
    assert len(list((tmp_path / "spill").iterdir())) == 7
    shards = list(disk.shards(3))
    assert [len(s["x"]) for s in shards] == [3, 3, 1]
    joined = np.concatenate([s["x"] for s in shards])
    assert np.array_equal(joined, memory.stacked()["x"])
    assert list(np.concatenate([s["order"] for s in shards])) == sorted(memory.stacked()["order"])


def test_capture_leaves_no_spilled_rows(default_pipe, default_model, tmp_path):
    out = tmp_path / "calib"
    out.mkdir()
    config = CalibrationConfig(prompts=("a handwritten digit one",), steps=2, guidance_scale=4.0, seed=0,
                               max_rows={"text_encoder": 2, "unet": 3, "vae_decoder": 1}, batch_size=1)
    meta = capture(default_pipe, config, out, default_model)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert meta["components"]["unet"]["rows"] == 3 and meta["components"]["unet"]["rows_seen"] == 4
    rows = CalibrationSet.open(out, default_model).load("unet")
    assert rows["sample"].shape[0] == 3 and list(rows["step_index"]) == sorted(rows["step_index"])


def test_config_and_prompt_errors(tmp_path):
    with pytest.raises(InputError):
        CalibrationConfig(prompts=())
    with pytest.raises(InputError, match="steps 0"):
        CalibrationConfig(prompts=("x",), steps=0)
    with pytest.raises(InputError, match="unknown calibration component"):
        CalibrationConfig(prompts=("x",), max_rows={"decoder": 3})
    f = tmp_path / "p.txt"
    f.write_text("# c\n  first  \n\nsecond\n")
    assert read_prompts(f) == ["first", "second"]


def test_calibrate_cli(run_cli, tmp_path):
    out = tmp_path / "calib"
    code, stdout, err = run_cli("calibrate", "--steps", "2", "--samples", "2", "--max-rows-unet", "3",
                                "--out", out, "--json")
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["rows"] == {"text_encoder": 4, "unet": 3, "vae_decoder": 2}
    assert (out / "meta.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
