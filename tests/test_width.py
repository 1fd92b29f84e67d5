"""edgekit.width.Width: one value, one key, one equality for every spelling of a width."""
import pytest

from edgekit.width import FULL, Width, WidthError, parse_widths


@pytest.mark.parametrize("spelling", [0.75, "0.75", "0.750", "w0.75", Width(75), 0.7500000001])
def test_every_spelling_of_a_width_is_one_value(spelling):
    w = Width.parse(spelling)
    assert w == Width(75) and hash(w) == hash(Width(75))
    assert (w.key, w.tag, str(w), float(w)) == ("0.75", "w0.75", "0.75", 0.75)


def test_full_width_and_none():
    assert Width.parse(None) is FULL and Width.parse(1) == FULL and Width.parse("1.00") == FULL
    assert FULL.is_full and not Width.parse(0.5).is_full
    assert (FULL.key, FULL.tag, str(FULL), f"{FULL:.2f}", f"{FULL}") == ("1.00", "w1.00", "1", "1.00", "1")


def test_order_follows_the_multiplier():
    assert sorted(parse_widths([1.0, 0.5, "0.75"])) == [Width(50), Width(75), FULL]


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), float("inf"), "half", "", 0.333, True, "w"])
def test_bad_widths_name_the_value(bad):
    with pytest.raises(WidthError, match="width"):
        Width.parse(bad)


def test_a_repeated_width_is_refused():
    with pytest.raises(WidthError, match="listed twice"):
        parse_widths(["0.5", 0.5])
