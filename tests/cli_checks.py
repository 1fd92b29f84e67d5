"""What every refusal test checks of a command's stderr: one line, no traceback, the expected words in it."""


def one_line(err: str, *needles: str) -> str:
    """The only non-empty line of ``err``, which holds every one of ``needles``; fails on a traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
