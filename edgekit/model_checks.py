"""What a model directory's configs claim, checked against each other before diffusers or transformers reads
them: a directory that lies (a tokenizer with ids the text encoder has no embedding for, more text positions
than the encoder has, a scheduler edgekit cannot tabulate or with a schedule diffusers does not know, a
latent side that allocates 160 GB) is one ModelFormatError naming the file, the field and what was expected,
never a traceback or an exit 0 with a broken bundle.

``check_model_configs`` is called by ``edgekit.pipeline.check_model_dir`` once the layout is known good;
every JSON file goes through the bounded reader (edgekit.safe_read), and every file the checks read must
resolve inside the model directory (a symlink out of it, to /etc/hostname say, is refused).
"""
from __future__ import annotations

import math
from pathlib import Path

from edgekit.constants import MODEL_INDEX
from edgekit.errors import ModelFormatError
from edgekit.limits import MAX_SAMPLE_SIZE, MAX_TEXT_POSITIONS, MAX_TRAIN_TIMESTEPS

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


def _read(path: Path, root: Path) -> dict:
    from edgekit.pipeline import read_json_object

    check_inside(path, root)
    return read_json_object(path)


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


def _tokenizer_ids(tok_dir: Path, root: Path) -> tuple[int, Path] | None:
    """The largest token id the tokenizer's own files give, and the file that holds it (None: no id found)."""
    best: tuple[int, Path] | None = None

    def offer(ids, path):
        nonlocal best
        ids = [i for i in ids if _whole(i)]
        if ids and (best is None or max(ids) > best[0]):
            best = (max(ids), path)

    tokenizer_json = tok_dir / "tokenizer.json"
    if tokenizer_json.is_file():
        data = _read(tokenizer_json, root)
        vocab = (data.get("model") or {}).get("vocab") if isinstance(data.get("model"), dict) else None
        if isinstance(vocab, dict):
            offer(vocab.values(), tokenizer_json)
        elif isinstance(vocab, list):  # Unigram: the position is the id
            offer([len(vocab) - 1], tokenizer_json)
        offer([t.get("id") for t in data.get("added_tokens") or [] if isinstance(t, dict)], tokenizer_json)
    for name in ("vocab.json", "added_tokens.json"):
        path = tok_dir / name
        if path.is_file():
            offer(_read(path, root).values(), path)
    config_path = tok_dir / "tokenizer_config.json"
    if config_path.is_file():
        decoder = _read(config_path, root).get("added_tokens_decoder")
        if isinstance(decoder, dict):
            offer([int(k) for k in decoder if isinstance(k, str) and k.isdigit() and len(k) < 20], config_path)
    return best


def check_text_configs(root: Path) -> None:
    """Tokenizer against text encoder: every id the tokenizer can emit has an embedding row, and the positions
    it pads to exist."""
    encoder_path = root / "text_encoder" / "config.json"
    encoder = _read(encoder_path, root)
    vocab_size = encoder.get("vocab_size")
    positions = encoder.get("max_position_embeddings")
    if vocab_size is not None and (not _whole(vocab_size) or vocab_size <= 0):
        raise _fail(encoder_path, "vocab_size", vocab_size, "a positive whole number")
    if positions is not None and (not _whole(positions) or not 0 < positions <= MAX_TEXT_POSITIONS):
        raise _fail(encoder_path, "max_position_embeddings", positions,
                    f"a whole number from 1 to {MAX_TEXT_POSITIONS:,}")
    tok_dir = root / "tokenizer"
    largest = _tokenizer_ids(tok_dir, root)
    if largest is not None and vocab_size is not None and largest[0] >= vocab_size:
        raise ModelFormatError(f"{largest[1]}: token id {largest[0]} is beyond the text encoder's vocabulary "
                               f"({encoder_path}: vocab_size {vocab_size}, ids 0 to {vocab_size - 1}); expected a "
                               "tokenizer and text encoder of one model")
    config_path = tok_dir / "tokenizer_config.json"
    if config_path.is_file() and positions is not None:
        length = _read(config_path, root).get("model_max_length")
        # transformers writes int(1e30) for "no limit"; a pipeline pads to model_max_length, so it must fit
        if length is not None and (not _whole(length) or not 0 < length <= positions):
            raise ModelFormatError(f"{config_path}: model_max_length {length!r}: expected a whole number up to the "
                                   f"text encoder's {positions} positions ({encoder_path}: max_position_embeddings)")


def check_unet_config(root: Path) -> None:
    path = root / "unet" / "config.json"
    config = _read(path, root)
    size = config.get("sample_size")
    sides = size if isinstance(size, list) else [size]
    if size is not None and (not sides or len(sides) > 2
                             or not all(_whole(s) and 1 <= s <= MAX_SAMPLE_SIZE for s in sides)):
        raise _fail(path, "sample_size", size, f"a latent side from 1 to {MAX_SAMPLE_SIZE:,} (SD 1.5: 64)")


def check_model_configs(root: Path, index: dict) -> None:
    """Every cross-file claim above, for the resolved model directory ``root`` and its parsed model_index.json."""
    from edgekit.schedule import SUPPORTED

    index_path = root / MODEL_INDEX
    check_inside(index_path, root)
    check_index_entries(index, index_path)
    named = index.get("scheduler", [None, None])[1]  # the class diffusers builds (check_model_dir: a pair)
    if named not in SUPPORTED:
        raise ModelFormatError(f"{index_path}: 'scheduler' is {named!r}, not a scheduler edgekit supports; supported: "
                               f"{', '.join(SUPPORTED)}")
    for component in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        for path in sorted((root / component).iterdir()):
            check_inside(path, root)
    for path in sorted(root.iterdir()):  # what edgekit reads beside them: edgekit_defaults.json, structure.json,
        if path.suffix in (".json", ".txt"):  # a prompts file (other files, a stray link, are no part of the model)
            check_inside(path, root)
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    if not scheduler_path.is_file():
        raise ModelFormatError(f"{scheduler_path}: missing (the scheduler's configuration)")
    check_scheduler_config(_read(scheduler_path, root), scheduler_path)
    check_unet_config(root)
    check_text_configs(root)
