"""The one bounded reader of the JSON, YAML and text files edgekit is given: a manifest, a trace, a model's
configs, a policy, a package config, an imported table, a prompts file.

A file is read only when it is a regular file (a FIFO would block forever, /dev/zero never ends, a directory
is no file) of at most a size limit, as UTF-8 (a leading byte-order mark dropped; no lone UTF-16 surrogate,
which tokenizers and JSON writers reject later with a traceback), nested at most ``MAX_DEPTH`` levels deep
(Python's parsers recurse) and with no integer of more than ``MAX_INT_DIGITS`` digits (a 400-digit number
overflows every float conversion after it). Each refusal is one error naming the file, the limit and what
was found, raised before anything is built from the contents.

Errors are worded for the caller: with ``param`` the error is about that parameter and file
("trace PATH: ..."); without, the file path leads ("PATH: ...").
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from edgekit.errors import InputError

MiB = 2**20
MAX_JSON_BYTES = 256 * MiB  # a real tokenizer.json is ~2 MiB, a bundle manifest with many schedules tens of MiB
MAX_YAML_BYTES = 1 * MiB  # a profile or package config: a page of settings
MAX_TEXT_BYTES = 16 * MiB  # a prompts file: ~100k prompts
MAX_DEPTH = 64  # the deepest edgekit or diffusers file nests about 6 levels
MAX_INT_DIGITS = 64  # the largest integer a config holds: transformers' "no limit" model_max_length (31 digits)
MAX_LABEL_CHARS = 200  # a device or metric name in a table row: printed on one line
BOM = "\ufeff"


def _fail(error: type[InputError], path, param: str | None, detail: str):
    if param is not None:
        return error(detail, param=param, value=path)
    return error(f"{path}: {detail}")


def _kind_of(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _size_text(size: int) -> str:
    return f"{size / MiB:.1f} MiB" if size >= MiB else f"{size} bytes"


def read_bytes(path: Path | str, max_bytes: int, what: str = "file", *, param: str | None = None,
               error: type[InputError] = InputError) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; anything else is refused without blocking (a FIFO is
    opened non-blocking and refused by its type, never read)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise _fail(error, path, param, f"no such file (expected a {what})") from None
    except OSError as exc:
        raise _fail(error, path, param, f"cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise _fail(error, path, param, f"{_kind_of(st.st_mode)}, not a regular file (expected a {what})")
    if st.st_size > max_bytes:
        raise _fail(error, path, param,
                    f"{_size_text(st.st_size)}, over the {_size_text(max_bytes)} limit for a {what}")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _fail(error, path, param, f"cannot be read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)  # what was opened: the path may have been replaced since the stat above
        if not stat.S_ISREG(st.st_mode):
            raise _fail(error, path, param, f"{_kind_of(st.st_mode)}, not a regular file (expected a {what})")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(max_bytes + 1 - total, 16 * MiB) or 1)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while being read
                raise _fail(error, path, param, f"over the {_size_text(max_bytes)} limit for a {what}")
    except OSError as exc:
        raise _fail(error, path, param, f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def printable(text: str) -> str:
    """``text`` without control characters (terminal escape sequences start with ESC, U+001B; C1 controls, line
    breaks and other format and unassigned code points go too): safe to print on one terminal line."""
    import unicodedata

    return "".join(ch for ch in str(text) if ch == " " or unicodedata.category(ch)[0] not in "CZ"
                   or unicodedata.category(ch) == "Zs")


def lone_surrogate(text: str) -> int | None:
    """The index of the first lone UTF-16 surrogate in ``text`` (a str that UTF-8 cannot encode), else None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_text(text: str, what: str, *, param: str | None = None, value=None,
               error: type[InputError] = InputError) -> str:
    """Refuse a string holding a lone surrogate (from a command line, where Python keeps undecodable bytes as
    surrogates, or a JSON ``\\ud800`` escape)."""
    at = lone_surrogate(text)
    if at is not None:
        detail = (f"holds a lone UTF-16 surrogate (U+{ord(text[at]):04X} at character {at}), not valid Unicode "
                  f"text (expected {what})")
        if param is not None:
            raise error(detail, param=param, value=value if value is not None else ascii(text)[:80])
        raise error(detail)
    return text


def decode_text(data: bytes, path: Path | str, what: str, *, param: str | None = None,
                error: type[InputError] = InputError) -> str:
    """UTF-8 text with a leading byte-order mark dropped (strict: invalid bytes and encoded surrogates refused)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(error, path, param, f"not UTF-8 text (byte {exc.start}: {exc.reason}; expected a {what})") \
            from None
    return text[1:] if text.startswith(BOM) else text


def read_text(path: Path | str, what: str = "text file", *, param: str | None = None,
              error: type[InputError] = InputError, max_bytes: int = MAX_TEXT_BYTES) -> str:
    """A UTF-8 text file (regular, at most ``max_bytes``, BOM dropped)."""
    return decode_text(read_bytes(path, max_bytes, what, param=param, error=error), path, what, param=param,
                       error=error)


class _TooLong(ValueError):
    pass


def _bounded_int(literal: str) -> int:
    digits = len(literal.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise _TooLong(digits)
    return int(literal)


def _check_tree(data, path, param, error, what: str) -> None:
    """Depth, integer size and lone surrogates of a parsed value, walked without recursion (an alias-heavy YAML
    document shares its nodes: each container is visited once)."""
    stack, seen = [(data, 1)], set()
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list, tuple)):
            if depth > MAX_DEPTH:
                raise _fail(error, path, param, f"nests deeper than {MAX_DEPTH} levels, the limit for a {what}")
            if id(node) in seen:
                continue
            seen.add(id(node))
            items = list(node.keys()) + list(node.values()) if isinstance(node, dict) else node
            stack.extend((item, depth + 1) for item in items)
        elif isinstance(node, bool):
            continue
        elif isinstance(node, int):
            if node.bit_length() > MAX_INT_DIGITS * 3.33:  # a bound on the digit count without printing it
                raise _fail(error, path, param, f"holds an integer of more than {MAX_INT_DIGITS} digits, the limit "
                                                f"for a {what}")
        elif isinstance(node, str):
            at = lone_surrogate(node)
            if at is not None:
                raise _fail(error, path, param, f"holds a lone UTF-16 surrogate (U+{ord(node[at]):04X}), not valid "
                                                f"Unicode text")


def parse_json(text: str, path: Path | str, what: str = "JSON file", *, param: str | None = None,
               error: type[InputError] = InputError, invalid: str = "not valid JSON"):
    """JSON text with the depth, integer and surrogate limits; ``invalid``: the words for a syntax error."""
    try:
        data = json.loads(text, parse_int=_bounded_int)
    except _TooLong as exc:
        raise _fail(error, path, param, f"holds an integer of {exc.args[0]} digits, over the {MAX_INT_DIGITS}-digit "
                                        f"limit for a {what}") from None
    except RecursionError:
        raise _fail(error, path, param, f"nests deeper than {MAX_DEPTH} levels, the limit for a {what}") from None
    except json.JSONDecodeError as exc:
        raise _fail(error, path, param, f"{invalid} ({exc})") from None
    _check_tree(data, path, param, error, what)
    return data


def read_json(path: Path | str, what: str = "JSON file", *, param: str | None = None,
              error: type[InputError] = InputError, max_bytes: int = MAX_JSON_BYTES, invalid: str = "not valid JSON"):
    """A JSON file, bounded (regular file, size, depth, integer digits, valid Unicode); NaN and Infinity are
    JSON's Python extensions and pass (a diffusers config holds -Infinity): callers check finiteness."""
    text = read_text(path, what, param=param, error=error, max_bytes=max_bytes)
    return parse_json(text, path, what, param=param, error=error, invalid=invalid)


def read_yaml(path: Path | str, what: str = "YAML file", *, param: str | None = None,
              error: type[InputError] = InputError, max_bytes: int = MAX_YAML_BYTES,
              invalid: str = "not valid YAML"):
    """A YAML (or JSON) file through yaml.safe_load, bounded like ``read_json``."""
    import yaml

    text = read_text(path, what, param=param, error=error, max_bytes=max_bytes)
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise _fail(error, path, param, f"nests deeper than {MAX_DEPTH} levels, the limit for a {what}") from None
    except ValueError as exc:  # an integer past Python's 4300-digit conversion limit
        detail = str(exc).splitlines()[0].split(";")[0] if str(exc) else type(exc).__name__
        raise _fail(error, path, param, f"holds a value YAML cannot convert ({detail}); integers are limited to "
                                        f"{MAX_INT_DIGITS} digits in a {what}") from None
    except yaml.YAMLError as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(error, path, param, f"{invalid} ({reason})") from None
    _check_tree(data, path, param, error, what)
    return data
