"""`edgekit prune --recover-steps` and `edgekit slim --train-steps` under `accelerate launch` with two CPU
processes (gloo) train the weights one process trains: same seed, same global batch (--batch-size split in
two equal shards, gradients averaged, loss normalisers over the global batch); one process writes the output
and prints the summary, in the same format.

Tolerance, from float summation order: the shards' sums and the gradient all-reduce add in another order
than one process does, so gradients differ in the last bits. AdamW divides each gradient by its own running
magnitude, so an element whose gradient is itself at rounding level (a term that is zero in exact arithmetic)
can step by up to the learning rate either way; every other element stays within rounding of the one-process
run. Measured on this model (4 steps, lr 1e-4): 99.9% of elements within 3e-8 (these tests) to 7e-8 (batch 8
on 24 rows), 2 to 19 of 2.4M (prune) and 4.2M (slim) elements past 1e-5, the largest 2e-5 to 1.3e-4 (about
one learning-rate step); one process at 1 vs 2 threads differs as much (99.9% within 7e-8, 5 past 1e-5).
Wrong splits fail clearly: each process taking a whole --batch-size (the global batch doubled): 99.9%
quantile 4e-4, 95% of elements past 1e-5; per-process loss normalisers: 2.1e-4, 14% past 1e-5.
"""
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

QUANTILE, QUANTILE_TOL = 0.999, 1e-6  # 99.9% of elements within 1e-6 (measured 7e-8; broken splits 2e-4+)
OUTLIER_DIFF, OUTLIER_SHARE = 1e-5, 1e-4  # at most 0.01% of elements past 1e-5 (measured < 0.0003%)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(*argv) -> subprocess.CompletedProcess:
    """`accelerate launch` of the edgekit CLI in two CPU processes (edgekit asks Accelerate for CPU processes
    when the launch group has no GPU)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port()),
           "-m", "edgekit.cli", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _unet(out: Path) -> dict:
    return load_file(str(out / "unet" / "diffusion_pytorch_model.safetensors"))


def _compare(one: Path, two: Path) -> dict:
    a, b = _unet(one), _unet(two)
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    diff = torch.cat([(a[k].double() - b[k].double()).abs().flatten() for k in a])
    sample = diff[torch.randperm(diff.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]]
    return {"max": float(diff.max()), "quantile": float(torch.quantile(sample, QUANTILE)),
            "outlier_share": float((diff > OUTLIER_DIFF).double().mean()), "elements": diff.numel()}


def _files(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def _check_same_run(one: Path, two: Path, launched: subprocess.CompletedProcess, section: str) -> dict:
    assert launched.returncode == 0, launched.stderr[-3000:]
    summary = json.loads(launched.stdout)  # one JSON object: only the main process printed
    assert summary[section]["processes"] == 2
    report_one = json.loads((one / "compress_report.json").read_text())
    assert report_one[section]["processes"] == 1
    assert _files(one) == _files(two)  # the same output, written once (no partial directory left)
    assert not [p for p in two.parent.iterdir() if ".partial-" in p.name]
    stats = _compare(one, two)
    assert stats["quantile"] <= QUANTILE_TOL, stats
    assert stats["outlier_share"] <= OUTLIER_SHARE, stats
    return stats


@pytest.fixture(scope="module")
def calib(digits_arch_model, tmp_path_factory):
    from edgekit.cli import main

    out = tmp_path_factory.mktemp("accelerate") / "calib"  # 12 UNet rows, 6 of them prompted
    assert main(["calibrate", "--model", str(digits_arch_model), "--samples", "2", "--steps", "2",
                 "--out", str(out)]) == 0
    return out


def test_prune_recovery_two_processes_match_one(run_cli, digits_arch_model, calib, tmp_path):
    args = ["prune", "--model", digits_arch_model, "--calib", calib, "--ratio", "0.5", "--recover-steps", "4",
            "--batch-size", "8", "--json"]
    code, _, err = run_cli(*args, "--out", tmp_path / "one")
    assert code == 0, err
    launched = _launch(*args, "--out", tmp_path / "two")
    stats = _check_same_run(tmp_path / "one", tmp_path / "two", launched, "recovery")
    one = json.loads((tmp_path / "one" / "compress_report.json").read_text())["recovery"]
    two = json.loads(launched.stdout)["recovery"]
    for key in ("output_loss_first", "output_loss_last"):  # the global batch's loss, not one shard's
        assert two[key] == pytest.approx(one[key], rel=1e-3), (key, one[key], two[key])
    print(f"prune recovery 1 vs 2 processes: {stats}")


def test_slim_two_processes_match_one(run_cli, digits_arch_model, calib, tmp_path):
    # From a first slim output: on a fresh one the full width equals its teacher, so the full-width term's
    # gradient is rounding noise that AdamW scales up to full steps (both runs step at random there).
    common = ["slim", "--model", digits_arch_model, "--calib", calib, "--widths", "0.5,1.0", "--batch-size", "4",
              "--json"]
    code, _, err = run_cli(*common, "--train-steps", "1", "--out", tmp_path / "init")
    assert code == 0, err
    args = [*common, "--init", tmp_path / "init", "--train-steps", "4"]
    code, _, err = run_cli(*args, "--out", tmp_path / "one")
    assert code == 0, err
    launched = _launch(*args, "--out", tmp_path / "two")
    stats = _check_same_run(tmp_path / "one", tmp_path / "two", launched, "training")
    print(f"slim 1 vs 2 processes: {stats}")


def test_batch_that_does_not_split_is_refused():
    from types import SimpleNamespace

    from edgekit.compress.training_rows import _loader
    from edgekit.errors import InputError

    rows = torch.utils.data.TensorDataset(torch.zeros(12, 1))
    with pytest.raises(InputError, match="split evenly over the 2 processes"):
        _loader(rows, 7, 0, SimpleNamespace(num_processes=2))
    with pytest.raises(InputError, match="larger than the 12 training rows"):
        _loader(rows, 16, 0, SimpleNamespace(num_processes=1))
    batches = [b[0].shape[0] for b in _loader(rows, 8, 0, SimpleNamespace(num_processes=2))]
    assert batches == [8]  # whole global batches only: the last, short one would not split into equal shards
