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
import shutil
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from edgekit import __version__
from edgekit.errors import EdgekitError, InputError

STAGES_DIR = "stages"
PACKAGE_FILE = "package.json"
REPORT_ENTRIES = ("report.md", "report.json", "plots")  # what edgekit.report.write_report writes
MARKER = ".edgekit-package.json"  # edgekit's own mark on a package output: only a directory holding it is resumed
MARKER_FORMAT = "edgekit-package/1"
DEFAULT_TARGETS = ("ort-web", "tflite", "coreml")
# What each target ships by default: the smallest precision that keeps prompt accuracy (tflite full-integer
# INT8 passes its rel-err tolerance but measured 0.55 accuracy on the digits model, so LiteRT ships fp16).
DEFAULT_PRECISIONS = {"ort-web": "int8", "tflite": "fp16", "coreml": "w8"}


class PackageError(EdgekitError):
    """Some targets failed; the others were written and the report lists what failed and why."""

    exit_code = 1


@dataclass(frozen=True)
class PackageConfig:
    targets: tuple[str, ...] = DEFAULT_TARGETS
    widths: tuple[float, ...] | None = None  # None: the model's widths when slimmable, else full width only
    prune: float | None = None
    recover_steps: int = 200
    slim_steps: int = 3000
    slim_lr: float = 5e-4
    quant: str = "ort-static"
    precisions: tuple[tuple[str, str], ...] = ()  # (target, precision) overrides of DEFAULT_PRECISIONS
    steps: tuple[int, ...] | None = None  # the bundles' (and bench's) step counts; None: the model's, else each profile's
    guidance: float | None = None  # the bundles' guidance scale; None: the model's edgekit_defaults.json
    calib_samples: int = 44
    samples: int = 20  # images per quality number (float quality per width, every table row)
    clip: str | None = None  # a local CLIP model directory: adds CLIP score to every quality number
    prompts: str | None = None  # calibration prompts file (None: the model's declared prompts, else the general set)
    repeats: int = 7  # timed images per table row (median): 3 left the policy choosing on noise
    seed: int = 0
    policy: dict | None = None  # policy parameters for every bundle (default: edgekit's)

    def __post_init__(self):
        from edgekit.targets import get_target

        if not self.targets:
            raise InputError("--targets: expected at least one of " + ", ".join(DEFAULT_TARGETS))
        for name in self.targets:
            get_target(name)  # one clear error for an unknown target
        if len(set(self.targets)) != len(self.targets):
            raise InputError(f"--targets {','.join(self.targets)}: a target is listed twice")
        for target, _ in self.precisions:
            if target not in self.targets:
                raise InputError(f"--precision {target}=...: {target} is not among --targets {','.join(self.targets)}")
        if self.widths is not None:
            if not self.widths or any(not 0.0 < float(w) <= 1.0 for w in self.widths):
                raise InputError(f"--widths {','.join(f'{w:g}' for w in self.widths)}: expected multipliers in (0, 1]")
        if self.prune is not None and not 0.0 < self.prune < 1.0:
            raise InputError(f"--prune {self.prune:g}: expected a fraction of channels to remove in (0, 1)")
        for flag, value in (("--recover-steps", self.recover_steps), ("--slim-steps", self.slim_steps)):
            if value < 0:
                raise InputError(f"{flag} {value}: expected a whole number >= 0")
        for flag, value in (("--calib-samples", self.calib_samples), ("--repeats", self.repeats)):
            if value <= 0:
                raise InputError(f"{flag} {value}: expected a positive whole number")
        from edgekit.quality.evaluator import MIN_SAMPLES

        if self.samples < MIN_SAMPLES:
            raise InputError(f"--samples {self.samples}: quality intervals need at least {MIN_SAMPLES} images")
        if self.clip is not None:
            from edgekit.quality.clip import check_clip_dir

            check_clip_dir(self.clip)
        if self.prompts is not None:
            from edgekit.calibration import read_prompts

            read_prompts(Path(self.prompts))
        if self.policy is not None:
            from edgekit.policy import PolicyConfig

            PolicyConfig.from_dict(self.policy, "--policy")

    def precision(self, target: str) -> str:
        return dict(self.precisions).get(target, DEFAULT_PRECISIONS[target])

    @classmethod
    def from_dict(cls, data: dict) -> "PackageConfig":
        """Strict: an unknown key is an error (with a "did you mean"); lists become tuples."""
        from edgekit.compress.prune import _check_keys

        _check_keys(data, cls)
        values = dict(data)
        for key in ("targets", "widths", "steps"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        if "precisions" in values:
            values["precisions"] = tuple(dict(values["precisions"]).items())
        return cls(**values)

    def to_dict(self) -> dict:
        out = asdict(self)
        for key in ("targets", "widths", "steps"):
            if out[key] is not None:
                out[key] = list(out[key])
        out["precisions"] = dict(self.precisions)
        return out


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
            self.records.append({"stage": name, "key": key, "ran": False, "seconds": 0.0})
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
            _write_json(state, {"stage": name, "key": key, "seconds": round(time.perf_counter() - started, 1),
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
        self.records.append({**record, "seconds": round(time.perf_counter() - started, 1), **memory.stop()})
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
    widths: tuple[float, ...]
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
        raise InputError(f"--out {out}: {MARKER} is not readable JSON ({exc}); remove it or choose another --out") from None
    entries = data.get("entries") if isinstance(data, dict) else None
    if (not isinstance(data, dict) or data.get("format") != MARKER_FORMAT or not isinstance(entries, list)
            or not all(isinstance(e, str) and e not in ("", ".", "..", MARKER) and "/" not in e and "\\" not in e
                       for e in entries)):
        raise InputError(f"--out {out}: {MARKER} is not an edgekit package marker (expected format "
                         f"'{MARKER_FORMAT}' and a list of entry names); remove it or choose another --out")
    return data


def check_out(out: Path, source: Path, force: bool, targets=DEFAULT_TARGETS) -> OutDir:
    """--out may be new, empty, or an earlier package output (resumed; restarted with --force). The marker
    file decides what is an earlier output: a non-empty directory without it is refused unless --force, and
    even then nothing edgekit did not write is replaced or removed (a name it would write is refused)."""
    from edgekit.fsutil import check_output_path, check_writable

    out = check_output_path(out, [source], force=True)  # overlap with the model, a writable parent
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: exists and is not a directory")
    check_writable(out)
    marker = read_marker(out) if out.is_dir() else None
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if marker is None and present and not force:
        raise InputError(f"--out {out}: already exists and is not an edgekit package output (no {MARKER}); choose "
                         "a new directory, or pass --force to write edgekit's files beside the ones there")
    owned = tuple(marker["entries"]) if marker else ()
    foreign = [name for name in out_entries(targets) if name in present and name not in owned]
    if foreign:
        raise InputError(f"--out {out}: holds {', '.join(foreign)}, which edgekit did not write and would "
                         "overwrite (--force never replaces files edgekit did not write); move them or choose "
                         "another --out")
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
        offered = tuple(float(w) for w in structure.widths)
        widths = tuple(config.widths or offered)
        missing = [w for w in widths if float(w) not in offered]
        if missing:
            raise InputError(f"--widths {','.join(f'{w:g}' for w in widths)}: {source} is slimmable at "
                             f"{','.join(f'{w:g}' for w in offered)} only")
        if config.prune is not None:
            raise InputError(f"--prune: {source} is already slimmable; prune its source model instead")
    else:
        widths = tuple(config.widths or (1.0,))
    widths = tuple(sorted({float(w) for w in widths}, reverse=True))
    slim = not slimmable and any(w < 1.0 for w in widths)
    if slim:
        from edgekit.compress.slim import SlimConfig
        from edgekit.pipeline import load_pipeline
        from edgekit.structure import check_widths

        slim_config = SlimConfig(widths=tuple(sorted(set(widths) | {1.0})))  # the slim stage's checks, before any work
        check_widths(load_pipeline(source).unet, slim_config.widths, slim_config.scope)
    quantizer = get_quantizer(config.quant, "--quant")
    quantizer.check_backend()
    profiles = {}
    for name in config.targets:
        target = get_target(name)
        profile = TargetProfile.from_yaml(profiles_dir() / f"{DEFAULT_PROFILES[name]}.yaml")
        profile = profile.with_precision(config.precision(name))
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
    p = plan(model_dir, config, out, force)
    try:
        return _package(p, config, progress, say)
    except KeyboardInterrupt:
        raise PackageInterrupted(f"interrupted; finished stages kept in {p.out}, rerun to resume") from None


@contextmanager
def _writing(stage: str, where: Path):
    """A full disk while ``stage`` writes ``where`` is one line naming both."""
    from edgekit.fsutil import OutOfSpaceError, disk_full

    try:
        yield
    except OSError as exc:
        full, path = disk_full(exc)
        if not full:
            raise
        raise OutOfSpaceError(f"{stage}: no space left on device writing {path or where} "
                              f"({_free(where)} free); free some space and rerun to resume") from None


def _package(p: Plan, config: PackageConfig, progress, say=None) -> dict:
    from edgekit.fsutil import OutOfSpaceError, sha256_tree
    from edgekit.pipeline import sampling_defaults

    started = time.perf_counter()
    source_key = sha256_tree(p.source)
    run_key = _digest({"source": source_key, "config": config.to_dict()})
    with _writing("package", p.out):
        claim_out(p.out_dir, config.targets, run_key)
    stages = Stages(p.out, say)
    work = p.out / STAGES_DIR

    model, model_key = p.source, source_key
    if config.prune is not None:
        model, model_key = _prune(stages, config, model, model_key, work / "pruned", progress)
    if p.slim:
        model, model_key = _slim(stages, config, p.widths, model, model_key, work / "slim", progress)
    defaults = sampling_defaults(model)

    calib, quant, quality = {}, {}, {}
    widest = max(p.widths)
    for w in p.widths:
        calib[w] = _calibrate(stages, config, model, model_key, w, work / f"calib-w{w:.2f}", progress)
    for w in p.widths:
        quant[w] = _quantize(stages, config, model, model_key, w, w == widest, calib[w],
                             work / f"quant-w{w:.2f}", progress)
    for w in p.widths:
        quality[w] = stages.run(f"quality-w{w:.2f}", {"model": model_key, "width": w, "steps": defaults.steps,
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
        "widths": list(p.widths),
        "config": {**config.to_dict(), "precisions": {t: config.precision(t) for t in config.targets}},
        "stages": stages.records,
        "calibration": {f"{w:g}": c for w, c in calib.items()},
        "quantize": {f"{w:g}": q for w, q in quant.items()},
        "float_quality": {f"{w:g}": q for w, q in quality.items()},
        "bundles": bundles,
        "failures": failures,
    }
    from edgekit.report import write_report

    with _writing("report", p.out):
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
    from edgekit.compress.prune import PruneConfig, prune_model

    prune_config = PruneConfig(ratio=config.prune, importance="taylor", recover_steps=config.recover_steps,
                               recover_lr=3e-4, seed=config.seed)

    def build(where: Path) -> dict:
        report = prune_model(model, prune_config, where, None, progress)
        return {"params": report["params"], "unet_macs": report["unet_macs"], "recovery": report["recovery"]}

    stages.run("prune", {"model": model_key, "prune": asdict(prune_config)}, build, output)
    return output, stages.key("prune")


def _slim(stages: Stages, config: PackageConfig, widths, model: Path, model_key: str, output: Path, progress):
    from edgekit.compress.slim import SlimConfig, slim_model

    slim_config = SlimConfig(widths=tuple(sorted(set(widths) | {1.0})), train_steps=config.slim_steps,
                             importance="taylor", lr=config.slim_lr, seed=config.seed, full_weight=2.0)

    def build(where: Path) -> dict:
        report = slim_model(model, slim_config, where, None, progress)
        return {"widths": report["widths"], "training": report["training"]}

    stages.run("slim", {"model": model_key, "slim": slim_config.to_dict()}, build, output)
    return output, stages.key("slim")


def _calibrate(stages: Stages, config: PackageConfig, model: Path, model_key: str, width: float, output: Path,
               progress) -> dict:
    from edgekit.calibration import CalibrationConfig, capture, default_prompts_file, read_prompts
    from edgekit.fsutil import sha256_file, staged_dir
    from edgekit.loader import open_model
    from edgekit.pipeline import sampling_defaults

    prompts_file = Path(config.prompts) if config.prompts else default_prompts_file(model)
    defaults = sampling_defaults(model)
    calib_config = CalibrationConfig(prompts=tuple(read_prompts(prompts_file)), steps=defaults.steps,
                                     samples=config.calib_samples,
                                     # the guidance the bundles sample with (an LCM UNet's embedding depends on it)
                                     guidance_scale=defaults.guidance_scale if config.guidance is None
                                     else config.guidance, seed=config.seed)

    def build(where: Path) -> dict:
        with staged_dir(where) as staging:
            meta = capture(open_model(model, width=width), calib_config, staging, model, prompts_file.resolve(),
                           progress)
        return {"images": meta["images_generated"],
                "rows": {k: v["rows"] for k, v in meta["components"].items()}}

    return stages.run(f"calib-w{width:.2f}", {"model": model_key, "width": width, "prompts": sha256_file(prompts_file),
                                              "config": asdict(calib_config)}, build, output)


def _quantize(stages: Stages, config: PackageConfig, model: Path, model_key: str, width: float, widest: bool,
              calib: dict, output: Path, progress) -> dict:
    from edgekit.quantize import DEFAULT_COMPONENTS, QuantizeOptions, quantize_model

    options = QuantizeOptions(seed=config.seed)
    # The text encoder and VAE decoder are the same at every width: quantized once, with the widest UNet.
    components = DEFAULT_COMPONENTS if widest else ("unet",)

    def build(where: Path) -> dict:
        manifest = quantize_model(model, Path(calib["dir"]), config.quant, where, components=components,
                                  width=None if width == 1.0 else width, options=options, progress=progress)
        return {"method": config.quant, "seconds": manifest["seconds"],
                "components": {name: {k: info[k] for k in ("kind", "heldout_rel_err", "bytes", "bytes_ratio_vs_fp32")}
                               for name, info in manifest["components"].items()}}

    return stages.run(f"quant-w{width:.2f}", {"model": model_key, "calib": stages.key(f"calib-w{width:.2f}"),
                                              "method": config.quant, "components": components,
                                              "options": options.to_dict()}, build, output)


def _float_quality(model: Path, width: float, defaults, config: PackageConfig, progress, cache_root: Path) -> dict:
    """The torch float model at ``width`` and its default steps, scored by the model's evaluators against its
    full-width reference (reference fidelity for every model; the extras its directory declares; CLIP)."""
    from edgekit.compress.prune import count_params
    from edgekit.loader import open_model
    from edgekit.quality.evaluator import ModelQuality
    from edgekit.structure import unet_macs

    evaluation = ModelQuality(model, config.samples, config.seed, clip_dir=config.clip, cache_root=cache_root,
                              guidance_scale=config.guidance, progress=progress)
    pipe = open_model(model, width=width)
    scores = evaluation.score_pipe(pipe, defaults.steps)
    macs = unet_macs(pipe.unet, tokens=int(pipe.tokenizer.model_max_length))  # the context the model really sees
    return {"width": width, "steps": defaults.steps, "params": count_params(pipe.unet), "unet_macs": macs,
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
    onnx_quant = (target.takes_quantized_onnx and profile.precision == "int8"
                  and all(c["kind"] == "onnx" for q in quant.values() for c in q["components"].values()))
    request = ExportRequest(
        model_dir=model, out=p.out / name, target=name, profile=profile, widths=p.widths,
        calib_dir=Path(calib[widest]["dir"]) if needs_calib else None, force=True,
        unet_calib_dirs=tuple((w, Path(calib[w]["dir"])) for w in p.widths) if needs_calib else (),
        quantized_dirs=tuple((w, Path(quant[w]["dir"])) for w in p.widths) if onnx_quant else (),
        steps=config.steps, guidance=config.guidance)
    export_inputs = {"model": model_key, "target": name, "profile": profile.to_dict(), "widths": p.widths,
                     "calib": [stages.key(f"calib-w{w:.2f}") for w in p.widths] if needs_calib else None,
                     "quant": [stages.key(f"quant-w{w:.2f}") for w in p.widths] if onnx_quant else None,
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
        bench_config = BenchConfig(steps=steps, widths=p.widths, samples=config.samples, repeats=config.repeats,
                                   seed=config.seed, reference_model=model, clip=Path(config.clip) if config.clip else None,
                                   cache_root=p.out / STAGES_DIR / "references")
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
    from edgekit.bundle import component_entries, entry_label, lookup

    components = []
    for comp, width, entry in component_entries(manifest):
        record = lookup(manifest["verification"], comp, width)
        errors = [c["rel_err"] for c in record["checks"] if "rel_err" in c]
        components.append({"component": entry_label(comp, width), "bytes": entry["bytes"],
                           "precision": entry["precision"], "max_rel_err": max(errors) if errors else None,
                           "runtimes": [c["runtime"] for c in record["checks"]]})
    return {"dir": str(bundle), "precision": manifest["precision"], "components": components,
            "bytes": sum(f["bytes"] for f in manifest["files"].values()),
            "export_s": manifest["created_with"].get("export_s")}


def _top_choice(manifest: dict) -> dict:
    """What the bundle's policy picks on a device in the best state (charging, full, nominal), with the row's
    quality numbers (the ranked one, and the extras the row carries)."""
    from edgekit.policy import DeviceState, Policy

    policy = Policy.from_manifest(manifest)
    decision = policy.decide(0.0, DeviceState(battery_level=1.0, charging=True, low_power=False, thermal="nominal"))
    row = next(r for r in manifest["table"] if int(r["steps"]) == decision.steps
               and float(r["width"]) == float(decision.width))
    extras = ("ssim", "prompt_accuracy", "prompt_accuracy_ci95", "frechet_distance", "frechet_distance_ci95",
              "clip_score")
    return {"steps": decision.steps, "width": decision.width, "latency_ms": row["latency_ms"],
            "quality": row.get("quality"), **{k: row[k] for k in extras if k in row}}
