"""Work limits checked before any work starts: each refusal names its limit, so a typo (``--samples
1000000000``, ``--repeats 10**9``, a scheduler with 10**8 training timesteps) is one line in milliseconds
instead of memory growing until the kernel kills the process.

The limits sit far above every real use (the largest study in benchmarks/ generates 2,000 images per row;
SD's schedulers train on 1,000 timesteps; a device samples in at most a few dozen steps) and far below what
exhausts a machine.
"""
from __future__ import annotations

import os

from edgekit.errors import InputError

MAX_SAMPLES = 100_000  # images one quality number, one calibration or one bench row generates
MAX_REPEATS = 1_000  # timing rounds of `bench`
MAX_TRAIN_TIMESTEPS = 10_000  # a scheduler's num_train_timesteps: its tables hold this many betas and sigmas
# sampling steps of one image: no scheduler takes more than its training timesteps (diffusers' train on 1,000),
# which the scheduler check names first; this bounds a count before any model directory is read
MAX_STEPS = MAX_TRAIN_TIMESTEPS
MAX_STEP_COUNTS = 64  # step counts one bundle offers
# A bundle's schedule for s steps carries two s-by-s coefficient tables: the sum of s*s over its step counts
# bounds the manifest (1,048,576 coefficients: about 25 MiB of JSON; 1,2,4,...,1000 is 1,024,000).
MAX_SCHEDULE_COEFFICIENTS = 2**20
MAX_SAMPLE_SIZE = 1_024  # a UNet's latent side (SD 1.5: 64, SDXL: 128); 100,000 would allocate 160 GB
MAX_TEXT_POSITIONS = 4_096  # a tokenizer's model_max_length that is actually used (CLIP: 77)


def cpu_count() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_at_most(value: int, limit: int, param: str, what: str) -> int:
    """``value`` unless it exceeds ``limit``: InputError naming the parameter, the limit and what it bounds."""
    if value > limit:
        raise InputError(f"over the limit of {limit:,} {what}", param=param, value=value)
    return value


def check_samples(samples: int, param: str = "samples") -> int:
    return check_at_most(samples, MAX_SAMPLES, param, "images")


def check_repeats(repeats: int, param: str = "repeats") -> int:
    return check_at_most(repeats, MAX_REPEATS, param, "timing rounds")


def check_threads(threads: int, param: str = "threads") -> int:
    cpus = cpu_count()
    if threads > cpus:
        raise InputError(f"more threads than the {cpus} CPUs this process may use", param=param, value=threads)
    return threads


def check_step_counts(steps, param: str = "steps") -> tuple[int, ...]:
    """A bundle's step counts: at most MAX_STEP_COUNTS of them, each at most MAX_STEPS, and schedule tables of at
    most MAX_SCHEDULE_COEFFICIENTS coefficients in all (a table for s steps holds s*s)."""
    steps = tuple(steps)
    shown = ",".join(map(str, steps)) if len(steps) <= 8 else f"{','.join(map(str, steps[:4]))},...,{steps[-1]}"
    if len(steps) > MAX_STEP_COUNTS:
        raise InputError(f"{len(steps)} step counts, over the limit of {MAX_STEP_COUNTS}", param=param, value=shown)
    for s in steps:
        check_at_most(s, MAX_STEPS, param, "sampling steps")
    total = sum(s * s for s in set(steps))
    if total > MAX_SCHEDULE_COEFFICIENTS:
        raise InputError(f"their schedule tables would hold {total:,} coefficients (s*s per step count s), over the "
                         f"limit of {MAX_SCHEDULE_COEFFICIENTS:,}; offer fewer or smaller step counts",
                         param=param, value=shown)
    return steps
