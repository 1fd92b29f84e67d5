"""edgekit: package Stable-Diffusion-style diffusers pipelines for phones and browsers.

Importing the package loads no converter SDK; each stage imports its heavy libraries when it runs.

Layers, lowest first. A module imports (at the top of the file or inside a function, by name or by a module
string) only from its own layer or a lower one; a name matches a module and everything below it, the longest
name wins. tests/test_layering.py reads this table and checks every import of every module against it.

    layer     modules
    base      edgekit errors width config constants fsutil noise schedule resources logs registry progress usage safe_read limits locking
    model     components structure pipeline lora model_checks calibration bundle profiles policy step_cache signing zoo
    quality   quality
    convert   onnx_export compress quantize
    runtime   runtime loader
    targets   targets
    package   package report
    cli       commands cli

Tools, outside the order (run by hand to rebuild shipped data; nothing imports them):

    tool      zoo.tiny_digits.train zoo.tiny_digits.train_fewstep
"""
__version__ = "0.1.0"
