"""One runnable example per command, shown at the end of its --help (edgekit.cli puts it in the epilog).

Run in this order in an empty directory, each works as written (tests/test_cli_help.py runs them so): the
examples that read a bundle or a calibration read the ones the earlier examples wrote. Each is cheap on the
embedded model (seconds to a minute on two CPU cores); the flags that make it cheap are the ones to raise
for real work."""
from __future__ import annotations

TRACE = ('[{"t": 0, "battery_level": 0.9, "charging": false, "low_power": false, "thermal": "nominal"}, '
         '{"t": 60, "battery_level": 0.5, "charging": false, "low_power": false, "thermal": "serious"}]')

# command path (as typed after `edgekit`) -> example line; the order is the order they run in
EXAMPLES = {
    "generate": 'edgekit generate --prompt "a handwritten digit seven" --seed 7 --out seven.png',
    "eval": "edgekit eval --steps 8 --samples 4",
    "calibrate": "edgekit calibrate --samples 4 --steps 4 --out calib",
    "quantize": "edgekit quantize --method ort-static --calib calib --components unet --float-budget 0 --out int8",
    "export": "edgekit export --target ort-web --calib calib --precision int8 --out bundle",
    "verify": "edgekit verify bundle",
    "bench": "edgekit bench bundle --steps 4,8 --repeats 1 --samples 2",
    "keygen": "edgekit keygen --out signing-key",
    "sign": "edgekit sign bundle --key signing-key && edgekit verify bundle --files-only --key signing-key.pub",
    "package": ("edgekit package --targets ort-web --widths 1.0 --calib-samples 2 --calib-steps 2 --steps 2 "
                "--samples 2 --repeats 1 --out bundles"),
    "policy": 'edgekit policy generate --bundle bundles/ort-web --prompt "a handwritten digit three" --out three.png',
    "policy simulate": (f"echo '{TRACE}' > trace.json && "
                        "edgekit policy simulate --bundle bundles/ort-web --trace trace.json"),
    "policy generate": ('edgekit policy generate --bundle bundles/ort-web --prompt "a handwritten digit three" '
                        "--seed 3 --out three-3.png"),
    "serve": "edgekit serve bundle --port 0",  # any free port: the URL it prints names it
    "prune": "edgekit prune --ratio 0.25 --calib calib --recover-steps 0 --out pruned",
    "slim": "edgekit slim --widths 0.5,1.0 --train-steps 0 --out slim",
}
TOP_LEVEL = EXAMPLES["generate"]


def epilog(command: str) -> str | None:
    """The help's closing example; None for a command without one (tests/test_cli_help.py refuses that)."""
    return f"example:\n  {EXAMPLES[command]}" if command in EXAMPLES else None
