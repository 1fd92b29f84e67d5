"""Typed errors. Every error a user can cause names the file or flag and what was expected."""
from __future__ import annotations


class EdgekitError(Exception):
    """Base class; the CLI prints the message on one line and exits with ``exit_code``."""

    exit_code = 2


class InputError(EdgekitError):
    """A path, flag or file given by the user is not what the command expects."""


class ModelFormatError(InputError):
    """A model directory is not a loadable diffusers Stable-Diffusion-style pipeline."""


class CalibrationError(InputError):
    """A calibration directory is missing, empty, or does not match the model."""


class MissingBackendError(EdgekitError):
    """An optional library a stage needs is not installed; the message names the pip package."""


class VerificationError(EdgekitError):
    """An exported artifact disagrees with the torch reference beyond its tolerance."""

    exit_code = 1


class NumericError(EdgekitError):
    """A stage produced NaN or Inf (a generated image, calibration rows); the message names the stage."""

    exit_code = 1
