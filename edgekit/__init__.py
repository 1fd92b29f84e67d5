"""edgekit: package Stable-Diffusion-style diffusers pipelines for phones and browsers.

Importing the package loads no converter SDK; each stage imports its heavy libraries when it runs.

How data flows: a diffusers model directory is opened once as a ``ModelDir`` (edgekit.modeldir: its configs, UNet
layout, sampling defaults and sha256, read once per process); the stages of ``edgekit package`` (edgekit.package:
each declares what it consumes and produces, and runs only when a requested target consumes its output) are
compress, calibrate, quantize, the INT8 recipe plans, export per target and bench; each reads directories and writes
its own, never editing another stage's output. ``bench`` writes its measured table as its own file, and one explicit
step merges it into the bundle's manifest.json (written last; in ``edgekit package`` the bundle stage writes the
shipped bundle once, with the table). The demos (web, Android, iOS) and the runtime policy read only that manifest.

Layers, lowest first. A module imports (at the top of the file or inside a function, by name or by a module
string) only from its own layer or a lower one. Every module is listed by name: a file by its module name, a
subpackage by its folder's name (it covers the files in that folder); ``edgekit`` names only this file. A module
the table does not name fails tests/test_layering.py, which reads this table and checks every import of every
module against it.

    layer     modules
    base      edgekit errors width config constants fsutil output_checks noise schedule resources logs registry progress usage safe_read limits locking
    model     modeldir components structure unet_slicing pipeline unet_layout lora model_checks calibration bundle profiles policy_inputs policy step_cache signing zoo
    quality   quality
    convert   onnx_export compress quantize
    runtime   runtime loader
    targets   targets
    package   package report
    cli       commands cli

Tools that rebuild shipped data live outside the package, in scripts/.
"""
__version__ = "0.1.0"
