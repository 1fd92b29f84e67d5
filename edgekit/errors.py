"""Typed errors. Every error a user can cause names the thing that is wrong (file, field, value) and what was
expected, in the library's own words.

An error about one parameter says which: ``InputError("expected a multiplier in (0, 1]", param="widths",
value="0.3,1.5")`` reads "widths 0.3,1.5: expected a multiplier in (0, 1]". The library never names a
command-line flag; a command that exposes the parameter as a flag words the error with the flag instead
(``edgekit.commands.common.error_line``: "--widths 0.3,1.5: ..."), and one that does not (``edgekit package``
has no --calib) keeps the library's words. A message that points to another parameter writes it as ``{name}``
and lists it in ``mentions``: ``InputError("already exists; {force} replaces it", param="out", value=path,
mentions=("force",))`` reads "out PATH: already exists; force replaces it" in the library and
"--out PATH: already exists; --force replaces it" from a command with both flags.
"""
from __future__ import annotations

_NO_VALUE = object()


class EdgekitError(Exception):
    """Base class; the CLI prints the message on one line and exits with ``exit_code``.

    ``param``: the library's name of the parameter the error is about (a config field or a function
    argument, e.g. "widths", "calibration"); ``value``: the value given for it, when the message shows it."""

    exit_code = 2

    def __init__(self, message: str = "", *, param: str | None = None, value=_NO_VALUE,
                 mentions: tuple[str, ...] = ()) -> None:
        self.mentions = tuple(mentions)
        self.detail = message
        self.param = param
        self.value = value
        super().__init__(self.worded(self.param))

    def worded(self, name: str | None, call=None) -> str:
        """The message with the parameter called ``name`` (its flag, or the library's own name) and each
        parameter it mentions called ``call(parameter)`` (None or no ``call``: its library name)."""
        detail = self.detail
        for mention in self.mentions:
            detail = detail.replace("{" + mention + "}", (call(mention) if call else None) or mention)
        if self.param is None or name is None:
            return detail
        subject = name if self.value is _NO_VALUE else f"{name} {self.value}"
        return f"{subject}: {detail}" if detail else subject


class InputError(EdgekitError):
    """A path, parameter or file given by the user is not what the library expects."""


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


class StageMemoryError(EdgekitError):
    """A stage ran out of memory; the message names the stage and its measured peak resident memory."""

    exit_code = 1
