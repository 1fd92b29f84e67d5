"""`edgekit package`: the whole chain in one resumable run, from a diffusers directory to one verified,
measured bundle per target and a report.

    prune (optional) -> slim (when the widths need it) -> calibrate (per width) -> quantize (per width)
    -> float quality (per width, torch) -> per target: export + verify -> bench (table into the manifest)
    -> report.md + plots

Every stage is the same code its own command runs; this module only chains them. Each stage's output
is keyed by a digest of everything it reads (its inputs' keys, its settings, the edgekit version) and
checksummed when the stage ends: a rerun into the same --out skips a stage whose output exists under
the same key and still matches its checksums, and redoes it and everything after it otherwise (the
summary says why: settings changed, damaged (file X), an input reran). Each stage writes atomically,
so an interrupted run (Ctrl-C, a kill, a full disk) resumes at the first unfinished stage. A target
that fails is reported with its cause; the other targets still complete, and the run exits non-zero.

--out is edgekit's only when it holds the marker .edgekit-package.json (format id, run key, edgekit
version, the top-level entries edgekit wrote there). A non-empty directory without it is refused unless
--force; --force restarts an earlier output by removing only the entries its marker lists, and never
overwrites or removes anything else (a name edgekit would write that it did not write is refused).

Layout of --out::

    .edgekit-package.json  the marker (written before any stage)
    package.json        what was asked, and per stage: key, ran or reused (and why it reran), seconds (written last)
    report.md           the report; report.json has its numbers; plots/*.png
    <target>/           one bundle per target, manifest.json carrying its measured table and policy
    stages/             intermediate outputs (model, calib-w*, quant-w*) and one <stage>.json per stage: its
                        key, result and the sha256 of every file of its output
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from edgekit import __version__
from edgekit.errors import EdgekitError, InputError
from edgekit.width import FULL, Width

STAGES_DIR = "stages"
PACKAGE_FILE = "package.json"
REPORT_ENTRIES = ("report.md", "report.json", "plots")  # what edgekit.report.write_report writes
MARKER = ".edgekit-package.json"  # edgekit's own mark on a package output: only a directory holding it is resumed
MARKER_FORMAT = "edgekit-package/1"
DEFAULT_TARGETS = ("ort-web", "tflite", "coreml")
# What each target ships by default: the smallest precision that keeps prompt accuracy. LiteRT ships its INT8 recipe
# (0.54x fp16's bytes): paired with fp16 on 1000 images per (width, steps) row, every row's 95% interval lies above
# -3 points (worst lower end -2.8; width 0.5, with dynamic-range activations, -0.7): see
# benchmarks/results/int8_recipes.md.
# onnx: the ort-web graphs plus the diffusers view, so the same precision.
DEFAULT_PRECISIONS = {"ort-web": "int8", "tflite": "int8", "coreml": "w8", "onnx": "int8"}


class PackageError(EdgekitError):
    """Some targets failed; the others were written and the report lists what failed and why."""

    exit_code = 1


# The package recipe: how `edgekit package` prunes and slims unless a --config file says otherwise. The config
# classes (PruneConfig, SlimConfig, QuantizeOptions) hold the defaults that `edgekit prune`, `slim` and
# `quantize` share; a package ships a model, so it asks for more than those quick defaults: Taylor importance
# and distillation steps (recovery after pruning; sandwich-rule training, with the full width weighted twice so
# it stays the source model's). Written into report.json with everything else, so a run can be repeated.
PRUNE_RECIPE = {"importance": "taylor", "recover_steps": 200, "recover_lr": 3e-4}
SLIM_RECIPE = {"train_steps": 3000, "importance": "taylor", "lr": 5e-4, "full_weight": 2.0}
RUN_WIDE = ("seed", "widths")  # set once for the whole run, never inside a prune/slim/quantize section


def _section(cls, value, recipe: dict, name: str, required=()):
    """``value`` (None, an instance of ``cls`` or a mapping of its fields over ``recipe``) as an instance of
    ``cls``; an error names the field as ``name.field``."""
    from edgekit.config import check_keys

    if isinstance(value, cls):
        return value
    if not isinstance(value, dict):
        raise InputError(f"expected a mapping of {cls.__name__} fields", param=name, value=value)
    check_keys(value, cls, name)
    inside = [k for k in RUN_WIDE if k in value]
    if inside:
        raise InputError(f"'{inside[0]}' is set for the whole run (top level), not per section", param=name)
    missing = [k for k in required if k not in value]
    if missing:
        raise InputError(f"'{missing[0]}' is required", param=name)
    try:
        return cls.from_dict({**recipe, **value})
    except InputError as exc:
        if exc.param is None:
            raise
        raise InputError(exc.detail, param=f"{name}.{exc.param}", value=exc.value) from None


def _section_dict(obj) -> dict:
    return {k: v for k, v in obj.to_dict().items() if k not in RUN_WIDE}


@dataclass(frozen=True)
class PackageConfig:
    """What `edgekit package` does, as data: ``from_dict`` / ``from_yaml`` / ``to_dict`` round-trip, and the
    dict is what report.json records. Fields accept their plain forms (a width as a number, ``prune`` as a ratio
    or a mapping of PruneConfig fields over PRUNE_RECIPE, ``slim`` and ``quantize`` as mappings) and hold typed
    values after construction."""

    targets: tuple[str, ...] = DEFAULT_TARGETS
    widths: tuple[Width, ...] | None = None  # None: the model's widths when slimmable, else full width only
    prune: "PruneConfig | None" = None  # None: no pruning
    slim: "SlimConfig | dict" = field(default_factory=dict)  # a model that is not slimmable is slimmed with this
    quant: str = "ort-static"
    quantize: "QuantizeOptions | dict" = field(default_factory=dict)  # the quantize stage's options
    precisions: tuple[tuple[str, str], ...] = ()  # (target, precision) overrides of DEFAULT_PRECISIONS
    steps: tuple[int, ...] | None = None  # the bundles' (and bench's) step counts; None: the model's, else each profile's
    guidance: float | None = None  # the bundles' guidance scale; None: the model's edgekit_defaults.json
    calib_samples: int = 44
    # sampling steps per calibration image (None: the model's default, e.g. 50 for SD-1.5): rows come from the
    # steps the bundles run, and at real size the capture is the longest stage at the model's full schedule
    calib_steps: int | None = None
    samples: int = 20  # images per quality number (float quality per width, every table row)
    clip: str | None = None  # a local CLIP model directory: adds CLIP score to every quality number
    prompts: str | None = None  # calibration prompts file (None: the model's declared prompts, else the general set)
    repeats: int = 7  # timed images per table row (median): 3 left the policy choosing on noise
    seed: int = 0
    policy: dict | None = None  # policy parameters for every bundle (default: edgekit's)
    # every bundle's UNet attends to keys and values pooled by this factor at its highest resolution (1 = off;
    # edgekit.targets.attention_downsample); ort-web then quantizes inside its export, from the same calibration
    attention_downsample: int = 1
    # the bundles a browser runs (ort-web) are checked in headless Chromium on wasm and WebGPU at export, so the
    # page may use WebGPU where it was verified (skipped, and said, where this host has no Chromium)
    browser_check: bool = True
    # step-cache intervals every bundle offers (edgekit.step_cache; 1 = the plain loop, always offered)
    cache: tuple[int, ...] = (1,)

    def __post_init__(self):
        from edgekit.compress.prune import PruneConfig
        from edgekit.compress.slim import SlimConfig
        from edgekit.config import widths_param
        from edgekit.quantize import QuantizeOptions
        from edgekit.targets import get_target

        if isinstance(self.targets, str) or not all(isinstance(t, str) for t in self.targets):
            raise InputError("expected a list of target names", param="targets", value=self.targets)
        targets = tuple(self.targets)
        if not targets:
            raise InputError("expected at least one of " + ", ".join(DEFAULT_TARGETS), param="targets")
        for name in targets:
            try:
                get_target(name)  # one clear error for an unknown target
            except InputError as exc:
                raise InputError(exc.detail, param="targets", value=name) from None
        from edgekit.quantize import get_quantizer

        try:
            get_quantizer(self.quant)
        except InputError as exc:
            raise InputError(exc.detail, param="quant", value=self.quant) from None
        if len(set(targets)) != len(targets):
            raise InputError("a target is listed twice", param="targets", value=",".join(targets))
        precisions = tuple((str(t), str(p)) for t, p in
                           (self.precisions.items() if isinstance(self.precisions, dict) else self.precisions))
        for target, _ in precisions:
            if target not in targets:
                raise InputError(f"{target} is not among the targets {','.join(targets)}", param="precisions",
                                 value=f"{target}=...")
        for name in ("widths", "steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__")):
                raise InputError("expected a list", param=name, value=value)
        widths = self.widths
        if widths is not None:
            if not widths:
                raise InputError("expected at least one width", param="widths")
            widths = widths_param(widths)
        prune = self.prune
        if prune is not None:
            if isinstance(prune, (int, float)) and not isinstance(prune, bool):
                if not 0.0 < prune < 1.0:
                    raise InputError("expected a fraction of channels to remove in (0, 1)", param="prune",
                                     value=f"{prune:g}")
                prune = {"ratio": float(prune)}
            prune = _section(PruneConfig, prune, {**PRUNE_RECIPE, "seed": self.seed}, "prune", required=("ratio",))
            prune = replace(prune, seed=self.seed)
        slim = _section(SlimConfig, self.slim, {**SLIM_RECIPE, "seed": self.seed}, "slim")
        slim = replace(slim, seed=self.seed)
        quantize = _section(QuantizeOptions, self.quantize, {"seed": self.seed}, "quantize")
        quantize = replace(quantize, seed=self.seed)
        for name, value in (("calib_samples", self.calib_samples), ("repeats", self.repeats),
                            ("calib_steps", 1 if self.calib_steps is None else self.calib_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InputError("expected a positive whole number", param=name, value=value)
        from edgekit.quality.evaluator import MIN_SAMPLES

        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < MIN_SAMPLES:
            raise InputError(f"quality intervals need at least {MIN_SAMPLES} images", param="samples",
                             value=self.samples)
        if self.steps is not None and (not self.steps or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0
                                                             for s in self.steps)):
            raise InputError("expected positive whole numbers of sampling steps", param="steps",
                             value=",".join(str(s) for s in self.steps))
        from edgekit.limits import MAX_STEPS, check_at_most, check_repeats, check_samples, check_step_counts

        check_samples(self.samples)  # every limit named before the first stage runs (edgekit.limits)
        check_samples(self.calib_samples, "calib_samples")
        check_repeats(self.repeats)
        check_at_most(1 if self.calib_steps is None else self.calib_steps, MAX_STEPS, "calib_steps", "sampling steps")
        if self.steps is not None:
            check_step_counts(self.steps)
        if not isinstance(self.browser_check, bool):
            raise InputError("expected true or false", param="browser_check", value=self.browser_check)
        from edgekit.profiles import check_downsample_factor

        check_downsample_factor(self.attention_downsample)
        from edgekit.step_cache import parse_intervals

        parse_intervals(list(self.cache) if isinstance(self.cache, (list, tuple)) else self.cache, "cache")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float))
                                          or not math.isfinite(self.guidance)):
            raise InputError("expected a finite number", param="guidance", value=self.guidance)
        if self.clip is not None:
            from edgekit.quality.clip import check_clip_dir

            check_clip_dir(self.clip)
        if self.prompts is not None:
            from edgekit.calibration import read_prompts

            read_prompts(Path(self.prompts))
        if self.policy is not None:
            from edgekit.policy import PolicyConfig

            PolicyConfig.from_dict(self.policy, "policy")
        for name, value in (("targets", targets), ("precisions", precisions), ("widths", widths), ("prune", prune),
                            ("slim", slim), ("quantize", quantize),
                            ("steps", None if self.steps is None else tuple(self.steps))):
            object.__setattr__(self, name, value)

    def precision(self, target: str) -> str:
        return dict(self.precisions).get(target, DEFAULT_PRECISIONS[target])

    def slim_config(self, widths) -> "SlimConfig":
        """The slim stage's config for the run's ``widths`` (full width added: the others distil from it)."""
        return replace(self.slim, widths=tuple(sorted({float(w) for w in widths} | {1.0})))

    @classmethod
    def from_dict(cls, data: dict, base: "PackageConfig | None" = None) -> "PackageConfig":
        """Strict: an unknown key is an error (with a "did you mean"). ``base``: the config ``data`` overrides
        (its sections and precisions are merged with ``data``'s, key by key)."""
        from edgekit.config import check_keys

        check_keys(data, cls, "package config")
        values = base.to_dict() if base is not None else {}
        for key, value in data.items():
            if key in ("slim", "quantize", "precisions") and isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            elif key == "prune" and isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            elif key == "prune" and isinstance(value, (int, float)) and isinstance(values.get(key), dict):
                value = {**values[key], "ratio": value}  # a ratio over the base's pruning settings
            values[key] = value
        for key in ("targets", "widths", "steps", "cache"):
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: Path | str, base: "PackageConfig | None" = None) -> "PackageConfig":
        """A YAML (or JSON) file of ``to_dict``'s fields, any subset; an error names the file and the field."""
        from edgekit.safe_read import read_yaml

        path = Path(path)
        # bounded: a regular file (a FIFO is refused, never waited on), its size, nesting and numbers
        data = read_yaml(path, "package config YAML", param="config_file", invalid="not a readable YAML file")
        try:
            return cls.from_dict({} if data is None else data, base)
        except InputError as exc:
            raise InputError(str(exc), param="config_file", value=path) from None
        except TypeError as exc:  # a value of the wrong kind (a list where a number belongs)
            raise InputError(f"a field has a value of the wrong kind ({exc})", param="config_file", value=path) from None

    def to_dict(self) -> dict:
        """Plain data (JSON and YAML): what report.json records and ``from_dict`` reads back."""
        return {"targets": list(self.targets),
                "widths": None if self.widths is None else [w.value for w in self.widths],
                "prune": None if self.prune is None else _section_dict(self.prune),
                "slim": _section_dict(self.slim),
                "quant": self.quant,
                "quantize": _section_dict(self.quantize),
                "precisions": dict(self.precisions),
                "steps": None if self.steps is None else list(self.steps),
                "guidance": self.guidance, "calib_samples": self.calib_samples, "calib_steps": self.calib_steps,
                "samples": self.samples,
                "clip": self.clip, "prompts": self.prompts, "repeats": self.repeats, "seed": self.seed,
                "policy": self.policy, "attention_downsample": self.attention_downsample,
                "browser_check": self.browser_check, "cache": list(self.cache)}


def _digest(inputs: dict) -> str:
    text = json.dumps({"edgekit": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _write_json(path: Path, data: dict) -> None:
    from edgekit.fsutil import staged_file

    with staged_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


class PackageInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run: the stage under way left nothing behind, the finished ones stay for a resume."""


class Stages:
    """Runs named stages, each skipped when its output exists under the same key and is undamaged.

    At the end of a stage the sha256 of every file of its output is recorded with its key (stages/<name>.json);
    before a stage is reused, its output is checked against that record. A stage reruns when it has no record,
    when its key changed, when its output is damaged (a file changed, missing or added), or when its inputs name
    the key of a stage that ran in this run (so a rerun of a damaged stage reruns everything that read it)."""

    def __init__(self, root: Path, say: Callable[[str], None] | None = None) -> None:
        self.root = root
        self.say = say or (lambda line: None)  # one line per stage event, for a person watching a terminal
        self.records: list[dict] = []
        self.current: str | None = None  # the stage running now (named in a failure)
        self._ran: dict[str, str] = {}  # key -> name of every stage that ran in this run

    def run(self, name: str, inputs: dict, build: Callable[[Path], dict], output: Path | None = None,
            amends: str | None = None) -> dict:
        """``build(output)`` makes the stage's output (atomically) and returns its JSON-able result. The key
        digests ``inputs``; ``output`` is the directory whose presence, with the key file, marks it done.
        ``amends``: the name of an earlier stage whose output this one rewrites in place (the bench writes its
        table into the export's manifest.json); that stage's checksums are renewed after this one ran."""
        from edgekit.fsutil import OutOfSpaceError, disk_full
        from edgekit.usage import StageMemory, out_of_memory

        key = _digest(inputs)
        self.current = name
        state = self.root / STAGES_DIR / f"{name}.json"
        saved = self._saved(state)
        rerun = state.exists()
        reason = (f"damaged (file {STAGES_DIR}/{state.name} unreadable)" if saved is None and rerun
                  else self._rerun_reason(saved, key, inputs, output))
        if reason is None:
            self.say(f"stage {name}: reused")
            earlier = {k: saved[k] for k in ("seconds", "memory") if k in saved}  # what the run that made it took
            self.records.append({"stage": name, "key": key, "ran": False, "seconds": 0.0,
                                 **({"made_by_earlier_run": earlier} if earlier else {})})
            return self._located(saved["result"], output)
        state.unlink(missing_ok=True)
        if output is not None and output.exists() and output.is_relative_to(self.root / STAGES_DIR):
            shutil.rmtree(output)  # a stale intermediate; final bundles are replaced atomically by their stage
        record = {"stage": name, "key": key, "ran": True, **({"reran": reason} if rerun else {})}
        self.say(f"stage {name}: running" + (f" again, {reason}" if rerun else ""))
        started = time.perf_counter()
        memory = StageMemory()  # the stage's own peak RSS (edgekit.usage)
        try:
            result = build(output)
            files = _checksums(output) if output is not None else {}
            if amends is not None:
                self._renew(amends, name)
            seconds, peak = round(time.perf_counter() - started, 1), memory.stop()
            _write_json(state, {"stage": name, "key": key, "seconds": seconds, "memory": peak,
                                "output": None if output is None else output.relative_to(self.root).as_posix(),
                                "files": files, "result": result})
        except BaseException as exc:
            self.records.append({**record, "failed": True, "seconds": round(time.perf_counter() - started, 1),
                                 **memory.stop()})
            if isinstance(exc, MemoryError):
                raise out_of_memory(name, self.records[-1]) from None
            full, path = disk_full(exc)
            if full:
                where = path or output or (self._output_of(amends) if amends else self.root)
                raise OutOfSpaceError(f"stage {name}: no space left on device writing {where} "
                                      f"({_free(self.root)} free); the stage's partial output was removed, "
                                      "free some space and rerun to resume") from None
            raise
        self.records.append({**record, "seconds": seconds, **peak})
        self.say(f"stage {name}: done in {self.records[-1]['seconds']:.1f} s")
        self._ran[key] = name
        return self._located(result, output)

    def _saved(self, state: Path) -> dict | None:
        """The record of an earlier run of the stage, or None when there is none or it is unreadable."""
        try:
            saved = json.loads(state.read_text())
        except (OSError, ValueError):
            return None
        return saved if isinstance(saved, dict) and "key" in saved and "result" in saved else None

    def _rerun_reason(self, saved: dict | None, key: str, inputs: dict, output: Path | None) -> str | None:
        """Why the stage must run (None: its earlier output can be reused)."""
        if saved is None:
            return "not run before"
        if saved["key"] != key:
            return "settings or inputs changed"
        upstream = sorted({self._ran[k] for k in _strings(inputs) if k in self._ran})
        if upstream:
            return f"its input {', '.join(upstream)} reran"
        if output is None:
            return None
        if not isinstance(saved.get("files"), dict):
            return "damaged (no checksums recorded)"
        damage = _damage(self.root, output, saved["files"])
        return f"damaged ({damage})" if damage else None

    def _output_of(self, name: str) -> Path:
        saved = self._saved(self.root / STAGES_DIR / f"{name}.json")
        return self.root / saved["output"] if saved and saved.get("output") else self.root

    def _renew(self, name: str, by: str) -> None:
        """Record the checksums of stage ``name``'s output again after stage ``by`` rewrote files in it."""
        state = self.root / STAGES_DIR / f"{name}.json"
        saved = self._saved(state)
        if saved is None or not saved.get("output"):
            return
        _write_json(state, {**saved, "files": _checksums(self.root / saved["output"]), "amended_by": by})

    @staticmethod
    def _located(result: dict, output: Path | None) -> dict:
        """Results name their directory where it is now (a package output may have been moved)."""
        return result if output is None else {**result, "dir": str(output)}

    def key(self, name: str) -> str:
        return next(r["key"] for r in reversed(self.records) if r["stage"] == name)


def _strings(value) -> set[str]:
    """Every string inside a stage's inputs (where the keys of the stages it reads appear)."""
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(_strings(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_strings(v) for v in value)) if value else set()
    return set()


def _checksums(output: Path) -> dict[str, str]:
    """sha256 of every file below ``output``, by POSIX path relative to it."""
    from edgekit.fsutil import sha256_file

    return {p.relative_to(output).as_posix(): sha256_file(p) for p in sorted(output.rglob("*")) if p.is_file()}


def _damage(root: Path, output: Path, files: dict[str, str]) -> str | None:
    """What differs between ``output`` and its recorded checksums, naming the first file (None: intact)."""
    from edgekit.fsutil import sha256_file

    where = output.relative_to(root).as_posix() if output.is_relative_to(root) else str(output)
    if not output.is_dir():
        return f"{where} missing"
    on_disk = {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}
    missing = sorted(set(files) - on_disk)
    added = sorted(on_disk - set(files))
    changed = [rel for rel in sorted(set(files) & on_disk) if sha256_file(output / rel) != files[rel]]
    problems = ([f"file {where}/{rel} missing" for rel in missing] + [f"file {where}/{rel} changed" for rel in changed]
                + [f"file {where}/{rel} not written by this stage" for rel in added])
    if not problems:
        return None
    return problems[0] + (f"; {len(problems) - 1} more" if len(problems) > 1 else "")


def _free(path: Path) -> str:
    try:
        return f"{shutil.disk_usage(path).free / 2**20:.1f} MiB"
    except OSError:
        return "unknown"


@dataclass
class Plan:
    """What the run will do, settled before any work so that bad input fails first."""

    source: Path
    out: Path
    widths: tuple[Width, ...]  # widest first
    slim: bool
    profiles: dict = field(default_factory=dict)  # target -> TargetProfile at its package precision
    out_dir: OutDir | None = None  # how --out is taken (resumed, restarted, new)


@dataclass(frozen=True)
class OutDir:
    """--out as checked before any work; nothing is written to it until the run starts."""

    path: Path
    owned: tuple[str, ...] = ()  # top-level entries an earlier run wrote (from its marker)
    restart: bool = False  # --force on an earlier output: its entries are removed before the run


def out_entries(targets) -> tuple[str, ...]:
    """The top-level entries a run writes in --out (besides the marker)."""
    return (STAGES_DIR, *targets, PACKAGE_FILE, *REPORT_ENTRIES)


def read_marker(out: Path) -> dict | None:
    """The marker of an earlier package run in ``out``, or None when there is none."""
    path = Path(out) / MARKER
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{MARKER} is not readable JSON ({exc}); remove it or choose another output directory",
                         param="out", value=out) from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or not isinstance(entries, list)
            or not all(isinstance(e, str) and e not in ("", ".", "..", MARKER) and "/" not in e and "\\" not in e
                       for e in entries)):
        raise InputError(f"{MARKER} is not an edgekit package marker (expected format '{MARKER_FORMAT}' and a list "
                         "of entry names); remove it or choose another output directory", param="out", value=out)
    return data


def check_out(out: Path, source: Path, force: bool, targets=DEFAULT_TARGETS) -> OutDir:
    """--out may be new, empty, or an earlier package output (resumed; restarted with --force). The marker
    file decides what is an earlier output: a non-empty directory without it is refused unless --force, and
    even then nothing edgekit did not write is replaced or removed (a name it would write is refused)."""
    from edgekit.fsutil import check_output_path, check_writable

    out = check_output_path(out, [source], force=True, replaces=False)  # overlap with the model, a writable parent
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", param="out", value=out)
    check_writable(out)
    marker = read_marker(out) if out.is_dir() else None
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if marker is None and present and not force:
        raise InputError(f"already exists and is not an edgekit package output (no {MARKER}); choose a new "
                         "directory, or pass {force} to write edgekit's files beside the ones there", param="out",
                         value=out, mentions=("force",))
    owned = tuple(marker["entries"]) if marker else ()
    foreign = [name for name in out_entries(targets) if name in present and name not in owned]
    if foreign:
        raise InputError(f"holds {', '.join(foreign)}, which edgekit did not write and would overwrite ({{force}} "
                         "never replaces files edgekit did not write); move them or choose another output directory",
                         param="out", value=out, mentions=("force",))
    return OutDir(out, owned=owned, restart=force and marker is not None)


def claim_out(out: OutDir, targets, run_key: str) -> None:
    """Make --out this run's: with --force remove what an earlier run wrote (only that), remove the temporary
    leftovers of killed runs, and write the marker before any stage writes."""
    from edgekit.fsutil import remove_stale_partials

    root = out.path
    root.mkdir(parents=True, exist_ok=True)
    if out.restart:
        for name in out.owned:
            path = root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    for directory, name in ((root.parent, root.name), (root, None), (root / STAGES_DIR, None)):
        remove_stale_partials(directory, name)
    owned = () if out.restart else out.owned
    write_marker(root, run_key, sorted(set(owned) | set(out_entries(targets))))


def write_marker(root: Path, run_key: str, entries) -> None:
    _write_json(root / MARKER, {"format": MARKER_FORMAT, "edgekit": __version__, "run_key": run_key,
                                "entries": list(entries),
                                "about": "written by edgekit package: marks this directory as its output; a "
                                         "rerun resumes it and replaces only the entries listed here"})


def plan(model_dir: Path, config: PackageConfig, out: Path, force: bool = False) -> Plan:
    from edgekit.pipeline import check_model_dir
    from edgekit.profiles import TargetProfile, profiles_dir
    from edgekit.quantize import get_quantizer
    from edgekit.structure import Structure
    from edgekit.targets import DEFAULT_PROFILES, get_target

    source = check_model_dir(model_dir)
    out_dir = check_out(out, source, force, config.targets)  # before any work: a bad --out costs nothing
    structure = Structure.load(source)
    slimmable = structure is not None and structure.slimmable
    if slimmable:
        widths = config.widths or structure.offered
        if any(w not in structure.offered for w in widths):
            raise InputError(f"{source} is slimmable at {','.join(str(w) for w in structure.offered)} only",
                             param="widths", value=",".join(str(w) for w in widths))
        if config.prune is not None:
            raise InputError(f"{source} is already slimmable; prune its source model instead", param="prune",
                             value=f"{config.prune.ratio:g}")
    else:
        widths = config.widths or (FULL,)
    widths = tuple(sorted(set(widths), reverse=True))
    slim = not slimmable and any(not w.is_full for w in widths)
    if slim:
        from edgekit.pipeline import load_pipeline
        from edgekit.structure import check_widths

        slim_config = config.slim_config(widths)  # the slim stage's checks, before any work
        if structure is None:  # the layout only, built from the config without weights (0.2 s, not 8 s at 860M)
            import json

            from accelerate import init_empty_weights
            from diffusers import UNet2DConditionModel

            with init_empty_weights():
                unet = UNet2DConditionModel.from_config(json.loads((source / "unet" / "config.json").read_text()))
        else:  # a pruned model: its recorded structure replayed on the weights
            unet = load_pipeline(source).unet
        check_widths(unet, slim_config.widths, slim_config.scope)
        from edgekit.compress.slim import check_memory as check_slim_memory

        # its measured memory line, before any work; errors name the fields as this config's slim section
        check_slim_memory(source, slim_config, section="slim")  # (--slim-steps for slim.train_steps)
    quantizer = get_quantizer(config.quant)
    quantizer.check_backend()
    from edgekit.quantize.memory import check_memory

    check_memory(quantizer, source, ("unet", "text_encoder", "vae_decoder"), param="quant")  # before any work
    profiles = {}
    for name in config.targets:
        target = get_target(name)
        profile = TargetProfile.from_yaml(profiles_dir() / f"{DEFAULT_PROFILES[name]}.yaml")
        profile = profile.with_precision(config.precision(name))
        if config.attention_downsample != 1:
            profile = profile.with_attention_downsample(config.attention_downsample)
        if config.browser_check and target.browser_check:
            profile = replace(profile, verify_in_browser=True)
        if tuple(config.cache) != (1,):
            from edgekit.profiles import with_cache

            profile = with_cache(profile, list(config.cache))
        target.check_profile(profile)
        profiles[name] = profile
    from edgekit.targets.base import sampling_plan

    for profile in profiles.values():  # the scheduler, step counts and guidance every export will take
        sampling_plan(source, profile, config.steps, config.guidance)
    return Plan(source=source, out=out_dir.path, widths=widths, slim=slim, profiles=profiles, out_dir=out_dir)


def package(model_dir: Path, config: PackageConfig, out: Path, force: bool = False, progress=None,
            say: Callable[[str], None] | None = None) -> dict:
    """Run the chain; returns the summary written to package.json. ``say`` receives one line per stage
    (running, reused, done in N s). Raises PackageError after writing
    everything else when some target failed, PackageInterrupted on Ctrl-C (finished stages are kept),
    OutOfSpaceError when the disk fills up (the stage under way leaves nothing half-written)."""
    from edgekit.locking import output_lock

    p = plan(model_dir, config, out, force)
    try:
        with output_lock(p.out, "edgekit package"):  # one run per --out: a second is refused naming this one
            return _package(p, config, progress, say)
    except KeyboardInterrupt:
        raise PackageInterrupted(f"interrupted; finished stages kept in {p.out}, rerun to resume") from None


def _package(p: Plan, config: PackageConfig, progress, say=None) -> dict:
    from edgekit.fsutil import OutOfSpaceError, out_of_space_names, sha256_tree
    from edgekit.pipeline import sampling_defaults

    resume = "free some space and rerun to resume"  # finished stages are kept
    started = time.perf_counter()
    source_key = sha256_tree(p.source)
    run_key = _digest({"source": source_key, "config": config.to_dict()})
    with out_of_space_names("package", p.out, then=resume):
        claim_out(p.out_dir, config.targets, run_key)
    stages = Stages(p.out, say)
    work = p.out / STAGES_DIR

    model, model_key = p.source, source_key
    if config.prune is not None:
        model, model_key = _prune(stages, config, model, model_key, work / "pruned", progress)
    if p.slim:
        slim_config = config.slim_config(p.widths)
        slim_calib = None
        if slim_config.needs_rows:  # the run's own calibration of the model it slims, at --calib-samples/-steps
            slim_calib = _calibrate(stages, config, model, model_key, FULL, work / "calib-source", progress,
                                    name="calib-source")
        model, model_key = _slim(stages, slim_config, model, model_key, slim_calib, work / "slim", progress)
    defaults = sampling_defaults(model)

    calib, quant, quality = {}, {}, {}
    widest = max(p.widths)
    for w in p.widths:
        calib[w] = _calibrate(stages, config, model, model_key, w, work / f"calib-{w.tag}", progress)
    for w in p.widths:
        quant[w] = _quantize(stages, config, model, model_key, w, w == widest, calib[w],
                             work / f"quant-{w.tag}", progress)
    for w in p.widths:
        quality[w] = stages.run(f"quality-{w.tag}", {"model": model_key, "width": w.value, "steps": defaults.steps,
                                                      "samples": config.samples, "seed": config.seed,
                                                      "guidance": config.guidance, "clip": config.clip},
                                lambda _, w=w: _float_quality(model, w, defaults, config, progress,
                                                              work / "references"))

    bundles, failures = {}, {}
    for name, profile in p.profiles.items():
        try:
            bundles[name] = _target(stages, config, name, profile, model, model_key, p, calib, quant, progress)
        except OutOfSpaceError:
            raise  # the next target would fill the same disk
        except Exception as exc:  # one target's failure must not stop the others
            failures[name] = {"error": f"{type(exc).__name__}: {exc}" if not isinstance(exc, EdgekitError) else str(exc),
                              "stage": stages.current}
            if not isinstance(exc, EdgekitError):
                failures[name]["traceback"] = traceback.format_exc(limit=8)

    summary = {
        "edgekit": __version__,
        "source": str(p.source),
        "source_sha256": source_key,
        "model": str(model),
        "widths": [w.value for w in p.widths],
        "config": config.to_dict(),  # PackageConfig.from_dict(report["config"]) repeats the run
        "precisions": {t: config.precision(t) for t in config.targets},
        "stages": stages.records,
        "calibration": {str(w): c for w, c in calib.items()},
        "quantize": {str(w): q for w, q in quant.items()},
        "float_quality": {str(w): q for w, q in quality.items()},
        "bundles": bundles,
        "failures": failures,
    }
    from edgekit.report import write_report

    with out_of_space_names("report", p.out, then=resume):
        summary["report"] = write_report(p.out, summary)
        written = {Path(f).parts[0] for f in (summary["report"]["markdown"], summary["report"]["json"],
                                              *summary["report"]["plots"])}
        if not written <= set(REPORT_ENTRIES):  # record what the report wrote (a later --force removes it)
            owned = read_marker(p.out)["entries"]
            write_marker(p.out, run_key, sorted(set(owned) | written))
        summary["report_dir"] = str(p.out)
        summary["seconds"] = round(time.perf_counter() - started, 1)
        _write_json(p.out / PACKAGE_FILE, summary)
    if failures:
        error = PackageError(f"{len(failures)} of {len(p.profiles)} targets failed: "
                           + "; ".join(f"{t}: {f['error']}" for t, f in failures.items())
                           + f" (the others are in {p.out}; see {p.out / 'report.md'})")
        error.summary = summary  # the CLI prints it before the error
        raise error
    return summary


def _prune(stages: Stages, config: PackageConfig, model: Path, model_key: str, output: Path, progress):
    from edgekit.compress.prune import prune_model

    prune_config = config.prune

    def build(where: Path) -> dict:
        report = prune_model(model, prune_config, where, None, progress)
        return {"params": report["params"], "unet_macs": report["unet_macs"], "recovery": report["recovery"]}

    stages.run("prune", {"model": model_key, "prune": asdict(prune_config)}, build, output)
    return output, stages.key("prune")


def _slim(stages: Stages, slim_config, model: Path, model_key: str, calib: dict | None, output: Path, progress):
    """``calib``: the calib-source stage's record when the slim config trains or ranks channels on data."""
    from edgekit.compress.slim import slim_model

    def build(where: Path) -> dict:
        report = slim_model(model, slim_config, where, Path(calib["dir"]) if calib else None, progress)
        return {"widths": report["widths"], "training": report["training"]}

    stages.run("slim", {"model": model_key, "slim": slim_config.to_dict(),
                        "calib": stages.key("calib-source") if calib else None}, build, output)
    return output, stages.key("slim")


def _calibrate(stages: Stages, config: PackageConfig, model: Path, model_key: str, width: Width, output: Path,
               progress, name: str | None = None) -> dict:
    """The calibration of ``model`` at ``width`` (stage ``name``, by default calib-<width>)."""
    from edgekit.calibration import CalibrationConfig, capture, default_prompts_file, read_prompts
    from edgekit.fsutil import sha256_file, staged_dir
    from edgekit.loader import open_model
    from edgekit.pipeline import sampling_defaults

    prompts_file = Path(config.prompts) if config.prompts else default_prompts_file(model)
    defaults = sampling_defaults(model)
    calib_config = CalibrationConfig(prompts=tuple(read_prompts(prompts_file)),
                                     steps=config.calib_steps or defaults.steps,
                                     samples=config.calib_samples,
                                     # the guidance the bundles sample with (an LCM UNet's embedding depends on it)
                                     guidance_scale=defaults.guidance_scale if config.guidance is None
                                     else config.guidance, seed=config.seed)

    def build(where: Path) -> dict:
        with staged_dir(where) as staging:
            meta = capture(open_model(model, width=width.value), calib_config, staging, model, prompts_file.resolve(),
                           progress)
        return {"images": meta["images_generated"],
                "rows": {k: v["rows"] for k, v in meta["components"].items()}}

    return stages.run(name or f"calib-{width.tag}", {"model": model_key, "width": width.value, "prompts": sha256_file(prompts_file),
                                              "config": asdict(calib_config)}, build, output)


def _quantize(stages: Stages, config: PackageConfig, model: Path, model_key: str, width: Width, widest: bool,
              calib: dict, output: Path, progress) -> dict:
    from edgekit.components import PER_WIDTH_COMPONENTS
    from edgekit.quantize import DEFAULT_COMPONENTS, quantize_model

    options = config.quantize
    # The components not exported per width are the same at every width: quantized once, with the widest UNet.
    components = DEFAULT_COMPONENTS if widest else PER_WIDTH_COMPONENTS

    def build(where: Path) -> dict:
        manifest = quantize_model(model, Path(calib["dir"]), config.quant, where, components=components,
                                  width=None if width.is_full else width.value, options=options, progress=progress)
        return {"method": config.quant, "seconds": manifest["seconds"],
                "components": {name: {k: info[k] for k in ("kind", "heldout_rel_err", "bytes", "bytes_ratio_vs_fp32")}
                               for name, info in manifest["components"].items()}}

    return stages.run(f"quant-{width.tag}", {"model": model_key, "calib": stages.key(f"calib-{width.tag}"),
                                              "method": config.quant, "components": components,
                                              "options": options.to_dict()}, build, output)


def _float_quality(model: Path, width: Width, defaults, config: PackageConfig, progress, cache_root: Path) -> dict:
    """The torch float model at ``width`` and its default steps, scored by the model's evaluators against its
    full-width reference (reference fidelity for every model; the extras its directory declares; CLIP)."""
    from edgekit.compress.prune import count_params
    from edgekit.loader import open_model
    from edgekit.quality.evaluator import ModelQuality
    from edgekit.structure import unet_macs

    evaluation = ModelQuality(model, config.samples, config.seed, clip_dir=config.clip, cache_root=cache_root,
                              guidance_scale=config.guidance, progress=progress)
    pipe = open_model(model, width=width.value)
    if width.is_full:  # the candidate is the reference model itself: its (cached) images, not a second run
        scores = evaluation.score(evaluation.reference())
    else:
        scores = evaluation.score_pipe(pipe, defaults.steps)
    macs = unet_macs(pipe.unet, tokens=int(pipe.tokenizer.model_max_length))  # the context the model really sees
    structure = pipe.edgekit_structure
    untrained = {"untrained": True} if not width.is_full and structure is not None and not structure.trained else {}
    return {**untrained, "width": width.value, "steps": defaults.steps, "params": count_params(pipe.unet), "unet_macs": macs,
            "n_images": len(evaluation.grid), "evaluators": evaluation.evaluators(), **scores.row, **scores.detail}


def _target(stages: Stages, config: PackageConfig, name: str, profile, model: Path, model_key: str, p: Plan,
            calib: dict, quant: dict, progress) -> dict:
    from edgekit.bundle import read_manifest
    from edgekit.runtime.bench import BenchConfig, measure, write_table
    from edgekit.targets import get_target
    from edgekit.targets.base import ExportRequest, export_bundle

    target = get_target(name)
    widest = max(p.widths)
    needs_calib = profile.precision in target.needs_calibration
    onnx_quant = (target.takes_quantized_onnx and profile.precision == "int8" and profile.attention_downsample == 1
                  and all(c["kind"] == "onnx" for q in quant.values() for c in q["components"].values()))
    request = ExportRequest(
        model_dir=model, out=p.out / name, target=name, profile=profile, widths=p.widths,
        calib_dir=Path(calib[widest]["dir"]) if needs_calib else None, force=True,
        unet_calib_dirs=tuple((w, Path(calib[w]["dir"])) for w in p.widths) if needs_calib else (),
        quantized_dirs=tuple((w, Path(quant[w]["dir"])) for w in p.widths) if onnx_quant else (),
        steps=config.steps, guidance=config.guidance)
    export_inputs = {"model": model_key, "target": name, "profile": profile.to_dict(),
                     "widths": [w.value for w in p.widths],
                     "calib": [stages.key(f"calib-{w.tag}") for w in p.widths] if needs_calib else None,
                     "quant": [stages.key(f"quant-{w.tag}") for w in p.widths] if onnx_quant else None,
                     "steps": config.steps, "guidance": config.guidance}

    def export(where: Path) -> dict:
        manifest = export_bundle(request, progress)
        return _bundle_summary(where, manifest)

    exported = stages.run(f"export-{name}", export_inputs, export, p.out / name)
    exported["int8_graphs"] = f"quantize stage ({config.quant})" if onnx_quant else (
        f"{name}'s own converter" if needs_calib else None)

    steps = config.steps or tuple(sorted(int(s) for s in read_manifest(p.out / name)["sampling"]["schedules"]))
    why = target.runtime_missing()
    if why:
        exported["bench"] = {"skipped": f"{why}: the table is measured on a device that runs {name} graphs "
                                        "(edgekit bench --import-table)"}
        return exported

    def bench(_) -> dict:
        bench_config = BenchConfig(steps=steps, widths=tuple(w.value for w in p.widths), samples=config.samples, repeats=config.repeats,
                                   seed=config.seed, reference_model=model, clip=Path(config.clip) if config.clip else None,
                                   cache_root=p.out / STAGES_DIR / "references",
                                   cache_intervals=tuple(config.cache))  # rows at every offered cache interval
        rows, runtime = measure(p.out / name, bench_config, progress)
        written, _ = write_table(p.out / name, read_manifest(p.out / name), rows, config.policy)
        return {"runtime": runtime, "rows": rows, "policy": written["policy"],
                "top_choice": _top_choice(written)}

    exported["bench"] = stages.run(f"bench-{name}", {"export": stages.key(f"export-{name}"), "steps": steps,
                                                      "samples": config.samples, "clip": config.clip,
                                                      "repeats": config.repeats, "seed": config.seed,
                                                      "policy": config.policy}, bench, amends=f"export-{name}")
    return exported


def _bundle_summary(bundle: Path, manifest: dict) -> dict:
    from edgekit.bundle import bytes_on_disk, component_entries, entry_label, lookup

    components = []
    for comp, width, entry in component_entries(manifest):
        record = lookup(manifest["verification"], comp, width)
        errors = [c["rel_err"] for c in record["checks"] if "rel_err" in c]
        components.append({"component": entry_label(comp, width), "bytes": entry["bytes"],
                           "precision": entry["precision"], "max_rel_err": max(errors) if errors else None,
                           "runtimes": [c["runtime"] for c in record["checks"]]})
    return {"dir": str(bundle), "precision": manifest["precision"], "components": components,
            "bytes": bytes_on_disk(bundle, manifest),  # the onnx view's hard links once
            "export_s": manifest["created_with"].get("export_s")}


def _top_choice(manifest: dict) -> dict:
    """What the bundle's policy picks on a device in the best state (charging, full, nominal), with the row's
    quality numbers (the ranked one, and the extras the row carries)."""
    from edgekit.policy import DeviceState, Policy

    policy = Policy.from_manifest(manifest)
    decision = policy.decide(0.0, DeviceState(battery_level=1.0, charging=True, low_power=False, thermal="nominal"))
    row = next(r for r in manifest["table"] if int(r["steps"]) == decision.steps
               and Width.parse(r["width"]) == Width.parse(decision.width))
    extras = ("ssim", "prompt_accuracy", "prompt_accuracy_ci95", "frechet_distance", "frechet_distance_ci95",
              "clip_score")
    return {"steps": decision.steps, "width": decision.width, "latency_ms": row["latency_ms"],
            "quality": row.get("quality"), **{k: row[k] for k in extras if k in row}}
