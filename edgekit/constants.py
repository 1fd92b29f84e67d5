"""File and directory names shared by every stage (one place, so layouts cannot drift)."""
MODEL_INDEX = "model_index.json"
EDGEKIT_DEFAULTS = "edgekit_defaults.json"  # sampling defaults a model ships (guidance, steps)
SAFETENSORS_SUFFIX = ".safetensors"
PIPELINE_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
CALIB_META = "meta.json"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"  # an Ed25519 signature of the manifest (edgekit.signing); not in its files list

# A bundle component entry's "format": the manifest accepts these (edgekit.bundle), a runner class runs each
# (edgekit.runtime.runners) and a target writes one (Target.file_format).
ONNX = "onnx"
TFLITE = "tflite"
MLPACKAGE = "mlpackage"
FORMATS = (ONNX, TFLITE, MLPACKAGE)
