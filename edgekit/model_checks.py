"""What a model directory's configs claim, checked against each other before diffusers or transformers reads
them: a directory that lies (a tokenizer with ids the text encoder has no embedding for, more text positions
than the encoder has, a scheduler edgekit cannot tabulate or with a schedule diffusers does not know, a
latent side that allocates 160 GB) is one ModelFormatError naming the file, the field and what was expected,
never a traceback or an exit 0 with a broken bundle.

``check_location`` (the path is a directory holding model_index.json), ``check_layout`` (the components,
their configs and weights) and ``check_model_configs`` (what the configs claim) are run once per directory by
``edgekit.modeldir.ModelDir``, whose reader they are given: every JSON file is read once, through the bounded
reader (edgekit.safe_read), and every file the checks read must resolve inside the model directory (a
symlink out of it, to /etc/hostname say, is refused).
"""
from __future__ import annotations

import math
import re
from pathlib import Path

from edgekit.constants import MODEL_INDEX, PIPELINE_COMPONENTS, SAFETENSORS_SUFFIX
from edgekit.errors import InputError, ModelFormatError
from edgekit.limits import MAX_SAMPLE_SIZE, MAX_TEXT_POSITIONS, MAX_TRAIN_TIMESTEPS

UNET, VAE, TEXT_ENCODER, TOKENIZER, SCHEDULER = PIPELINE_COMPONENTS  # diffusers' folder names
# Classes each component may have; anything else is not an SD-1.x/2.x-style pipeline.
EXPECTED_CLASSES = {
    UNET: {"UNet2DConditionModel"},
    VAE: {"AutoencoderKL"},
    TEXT_ENCODER: {"CLIPTextModel", "CLIPTextModelWithProjection"},
    TOKENIZER: {"CLIPTokenizer", "CLIPTokenizerFast"},
}
WEIGHT_COMPONENTS = (UNET, VAE, TEXT_ENCODER)
# What a model hub id looks like (owner/name, as the hub allows them): read as a path it does not exist here.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# The components diffusers' StableDiffusionPipeline may leave out: [null, null] in model_index.json.
OPTIONAL_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")  # every supported scheduler computes these
BETA_SCHEDULES_OF = {"DDPMScheduler": ("sigmoid",), "HeunDiscreteScheduler": ("exp",)}  # and its own extras
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # what a UNet of an SD-style pipeline predicts


def _fail(path: Path, field: str, value, expected: str):
    shown = "null" if value is None else repr(value)  # as the JSON file spells it
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return ModelFormatError(f"{path}: {field} {shown}: expected {expected}")


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def inside_model(path: Path, root: Path) -> bool:
    """True when ``path`` resolves inside ``root`` (the resolved model directory), or, for a snapshot of the
    Hugging Face hub cache (``models--org--name/snapshots/<rev>/``), inside that repository's ``blobs/``,
    where the cache keeps the files its snapshot links to."""
    try:
        real = Path(path).resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    if real == root or root in real.parents:
        return True
    repo = root.parent.parent
    if root.parent.name == "snapshots" and repo.name.startswith("models--"):
        return (repo / "blobs") in real.parents
    return False


def check_inside(path: Path, root: Path) -> Path:
    """``path`` unless it (a symlink, or a linked folder on its way) leads out of the model directory."""
    if inside_model(path, root):
        return path
    try:
        target = Path(path).resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # a broken link, a loop
        raise ModelFormatError(f"{path}: cannot be resolved ({exc})") from None
    raise ModelFormatError(f"{path}: a link to {target}, outside the model directory {root}; expected the model's "
                           "own file")


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def check_location(root: Path, given: str, param: str) -> None:
    """The resolved path ``root`` (``given``: as the user wrote it) is a directory holding model_index.json."""
    if not root.exists():
        if HUB_ID.fullmatch(given):
            raise InputError(f"no such directory; edgekit reads a local diffusers directory and never contacts a "
                             f"model hub: on a machine with access, `huggingface-cli download {given} --local-dir "
                             f"DIR`, then pass DIR", param=param, value=given)
        raise InputError("no such directory", param=param, value=root)
    if not root.is_dir():
        raise InputError("expected a diffusers pipeline directory, got a file", param=param, value=root)
    if not (root / MODEL_INDEX).is_file():
        raise ModelFormatError(f"not a diffusers pipeline directory ({MODEL_INDEX} missing)", param=param, value=root)


def check_layout(root: Path, param: str, read) -> None:
    """model_index.json names the five components with the classes of an SD-style pipeline, each has its folder,
    every JSON file in them is an object, and unet, vae and text_encoder have a config and a complete weights
    file. ``read(rel)``: the parsed JSON object at a path relative to ``root`` (refused outside it)."""
    from edgekit.pipeline import _weights_file, check_safetensors

    index_path = root / MODEL_INDEX
    index = read(MODEL_INDEX)
    for component in PIPELINE_COMPONENTS:
        entry = index.get(component)
        if not isinstance(entry, list) or len(entry) != 2 or entry[1] is None:
            raise ModelFormatError(f"{index_path}: component '{component}' missing (an SD-style pipeline needs "
                                   f"{', '.join(PIPELINE_COMPONENTS)})")
        allowed = EXPECTED_CLASSES.get(component)
        if allowed and entry[1] not in allowed:
            raise ModelFormatError(f"{index_path}: '{component}' is {entry[1]}, expected one of {sorted(allowed)}")
        if not (root / component).is_dir():
            raise ModelFormatError(f"component folder '{component}/' missing", param=param, value=root)
        for json_file in sorted((root / component).glob("*.json")):  # configs, tokenizer files: all objects
            read(json_file.relative_to(root).as_posix())
    for component in WEIGHT_COMPONENTS:
        config_path = root / component / "config.json"
        if not config_path.is_file():
            raise ModelFormatError(f"{config_path}: missing (the {component}'s configuration)")
        read(config_path.relative_to(root).as_posix())
        weights = _weights_file(root / component)
        if weights is None:
            raise ModelFormatError(f"{root / component}: no weights file (*{SAFETENSORS_SUFFIX} or *.bin)")
        if weights.suffix == SAFETENSORS_SUFFIX:
            check_safetensors(weights)


def check_index_entries(index: dict, index_path: Path) -> None:
    """model_index.json: an optional component is [library, class] or [null, null] (diffusers' form for one left
    out); a bare null, or anything but a pair, diffusers fails on with a TypeError."""
    for name in OPTIONAL_COMPONENTS:
        if name not in index:
            continue
        entry = index[name]
        if not isinstance(entry, list) or len(entry) != 2:
            raise _fail(index_path, f"'{name}'", entry, "[library, class], or [null, null] for a component the "
                                                        "pipeline leaves out (diffusers' form)")


def check_scheduler_config(config: dict, path: Path | str) -> None:
    """The scheduler: a class edgekit tabulates (edgekit.schedule.SUPPORTED), a bounded number of training
    timesteps, a beta schedule and a prediction type diffusers computes; all before diffusers builds it."""
    from edgekit.schedule import SUPPORTED

    name = config.get("_class_name")
    if not isinstance(name, str) or name not in SUPPORTED:
        raise ModelFormatError(f"{path}: _class_name {name!r} is not a scheduler edgekit supports; supported: "
                               f"{', '.join(SUPPORTED)}")
    steps = config.get("num_train_timesteps", 1000)
    if not _whole(steps) or not 1 <= steps <= MAX_TRAIN_TIMESTEPS:
        raise _fail(path, "num_train_timesteps", steps, f"a whole number from 1 to {MAX_TRAIN_TIMESTEPS:,}")
    betas = config.get("trained_betas")
    if betas is not None:
        if (not isinstance(betas, list) or len(betas) != steps
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and math.isfinite(b) and 0 < b < 1
                           for b in betas)):
            raise _fail(path, "trained_betas", betas, f"null, or {steps} finite numbers in (0, 1) (one per training "
                                                      "timestep)")
    else:
        known = BETA_SCHEDULES + BETA_SCHEDULES_OF.get(name, ())
        schedule = config.get("beta_schedule", "linear")
        if schedule not in known:
            raise _fail(path, "beta_schedule", schedule, f"one of {', '.join(known)} for {name}")
        for key in ("beta_start", "beta_end"):
            value = config.get(key, 0.0001)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or not 0 <= value < 1:
                raise _fail(path, key, value, "a finite number in [0, 1)")
    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise _fail(path, "prediction_type", prediction, f"one of {', '.join(PREDICTION_TYPES)}")


def _tokenizer_ids(tok_dir: Path, root: Path, read) -> tuple[int, Path] | None:
    """The largest token id the tokenizer's own files give, and the file that holds it (None: no id found)."""
    best: tuple[int, Path] | None = None

    def offer(ids, path):
        nonlocal best
        ids = [i for i in ids if _whole(i)]
        if ids and (best is None or max(ids) > best[0]):
            best = (max(ids), path)

    tokenizer_json = tok_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        data = read(_rel(tokenizer_json, root))
        vocab = (data.get("model") or {}).get("vocab") if isinstance(data.get("model"), dict) else None
        if isinstance(vocab, dict):
            offer(vocab.values(), tokenizer_json)
        elif isinstance(vocab, list):  # Unigram: the position is the id
            offer([len(vocab) - 1], tokenizer_json)
        offer([t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)], tokenizer_json)
    for name in ("vocab.json", "added_tokens.json"):
        path = tok_dir / name
        if path.is_file():
            offer(read(_rel(path, root)).values(), path)
    config_path = tok_dir / "tokenizer_config.json"
    if config_path.is_file():
        decoder = read(_rel(config_path, root)).get("added_tokens_decoder")
        if isinstance(decoder, dict):
            offer([int(k) for k in decoder if isinstance(k, str) and k.isdigit() and len(k) < 20], config_path)
    return best


def check_text_configs(root: Path, read) -> None:
    """Tokenizer against text encoder: every id the tokenizer can emit has an embedding row, and the positions
    it pads to exist."""
    encoder_path = root / TEXT_ENCODER / "config.json"
    encoder = read(_rel(encoder_path, root))
    vocab_size = encoder.get("vocab_size")
    positions = encoder.get("max_position_embeddings")
    if vocab_size is not None and (not _whole(vocab_size) or vocab_size <= 0):
        raise _fail(encoder_path, "vocab_size", vocab_size, "a positive whole number")
    if positions is not None and (not _whole(positions) or not 0 < positions <= MAX_TEXT_POSITIONS):
        raise _fail(encoder_path, "max_position_embeddings", positions,
                    f"a whole number from 1 to {MAX_TEXT_POSITIONS:,}")
    tok_dir = root / TOKENIZER
    largest = _tokenizer_ids(tok_dir, root, read)
    if largest is not None and vocab_size is not None and largest[0] >= vocab_size:
        raise ModelFormatError(f"{largest[1]}: token id {largest[0]} is beyond the text encoder's vocabulary "
                               f"({encoder_path}: vocab_size {vocab_size}, ids 0 to {vocab_size - 1}); expected a "
                               "tokenizer and text encoder of one model")
    config_path = tok_dir / "tokenizer_config.json"
    if config_path.is_file() and positions is not None:
        length = read(_rel(config_path, root)).get("model_max_length")
        # transformers writes int(1e30) for "no limit"; a pipeline pads to model_max_length, so it must fit
        if length is not None and (not _whole(length) or not 0 < length <= positions):
            raise ModelFormatError(f"{config_path}: model_max_length {length!r}: expected a whole number up to the "
                                   f"text encoder's {positions} positions ({encoder_path}: max_position_embeddings)")


def check_unet_config(root: Path, read) -> None:
    path = root / UNET / "config.json"
    config = read(_rel(path, root))
    size = config.get("sample_size")
    sides = size if isinstance(size, list) else [size]
    if size is not None and (not sides or len(sides) > 2
                             or not all(_whole(s) and 1 <= s <= MAX_SAMPLE_SIZE for s in sides)):
        raise _fail(path, "sample_size", size, f"a latent side from 1 to {MAX_SAMPLE_SIZE:,} (SD 1.5: 64)")


def check_model_configs(root: Path, read) -> None:
    """Every cross-file claim above, for the resolved model directory ``root`` (``read``: as ``check_layout``)."""
    from edgekit.schedule import SUPPORTED

    index_path = root / MODEL_INDEX
    index = read(MODEL_INDEX)
    check_index_entries(index, index_path)
    named = index.get(SCHEDULER, [None, None])[1]  # the class diffusers builds (check_model_dir: a pair)
    if named not in SUPPORTED:
        raise ModelFormatError(f"{index_path}: '{SCHEDULER}' is {named!r}, not a scheduler edgekit supports; supported: "
                               f"{', '.join(SUPPORTED)}")
    for component in PIPELINE_COMPONENTS:
        for path in sorted((root / component).iterdir()):
            check_inside(path, root)
    for path in sorted(root.iterdir()):  # what edgekit reads beside them: edgekit_defaults.json, structure.json,
        if path.suffix in (".json", ".txt"):  # a prompts file (other files, a stray link, are no part of the model)
            check_inside(path, root)
    scheduler_path = root / SCHEDULER / "scheduler_config.json"
    if not scheduler_path.is_file():
        raise ModelFormatError(f"{scheduler_path}: missing (the scheduler's configuration)")
    check_scheduler_config(read(_rel(scheduler_path, root)), scheduler_path)
    check_unet_config(root, read)
    check_text_configs(root, read)
