"""Sizes and durations as people type them in specs, and as mlfleet prints them back."""

from __future__ import annotations

import math

import pytest

from mlfleet.core.base.units import format_duration, format_size, parse_duration, parse_size

KiB, MiB, GiB, TiB = 1024, 1024**2, 1024**3, 1024**4


@pytest.mark.parametrize("text, expected", [
    ("20GiB", 20 * GiB),
    ("20 GiB", 20 * GiB),
    ("20gib", 20 * GiB),
    ("20Gi", 20 * GiB),
    ("512MB", 512 * 1000**2),
    ("512MiB", 512 * MiB),
    ("1.5TiB", int(1.5 * TiB)),
    ("16GB", 16 * 1000**3),
    ("4k", 4000),
    ("64KiB", 64 * KiB),
    ("100", 100),
    ("100B", 100),
    ("0", 0),
    (2048, 2048),
    (1.5e9, 1_500_000_000),
])
def test_sizes_are_read_in_decimal_and_binary_units(text: str | int | float, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text, words", [
    ("20XB", "unknown size unit 'XB'"),
    ("100PiB", "unknown size unit 'PiB'"),
    ("GiB", "expected a size like 20GiB"),
    ("", "expected a size like 20GiB"),
    ("twenty gigs", "expected a size like 20GiB"),
    ("-5GiB", "expected a size like 20GiB"),
    ("1.2.3GiB", "expected a size like 20GiB"),
    (-1, "cannot be negative"),
    (True, "expected a size like 20GiB"),
])
def test_a_size_that_is_not_one_says_so(text: str | int | bool, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(text)
    assert words in str(caught.value)


@pytest.mark.parametrize("value", [math.inf, math.nan], ids=["inf", "nan"])
def test_a_size_that_is_not_finite_is_refused_as_a_size(value: float) -> None:
    # YAML's .inf / .nan are floats; they must come back as our ValueError, not OverflowError or int()'s words.
    with pytest.raises(ValueError, match="size"):
        parse_size(value)


@pytest.mark.parametrize("text, seconds", [
    ("90", 90.0),
    (90, 90.0),
    (2.5, 2.5),
    ("45s", 45.0),
    ("30m", 1800.0),
    ("2h", 7200.0),
    ("2h30m", 9000.0),
    ("2h 30m", 9000.0),
    ("2H30M", 9000.0),
    ("1.5h", 5400.0),
    ("1d", 86400.0),
    ("1d2h3m4s", 86400 + 7200 + 180 + 4.0),
    ("0s", 0.0),  # the parser reads it; a job spec refuses a zero timeout
])
def test_durations_are_read_in_seconds_minutes_hours_and_days(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, words", [
    ("soon", "expected a duration like 90s, 30m, 2h30m or 1d, got 'soon'"),
    ("", "expected a duration"),
    ("h", "expected a duration"),
    ("30x", "expected a duration"),
    ("5m3", "expected a duration"),
    ("-5m", "expected a duration"),
    ("1 week", "expected a duration"),
    (-1, "cannot be negative"),
    (False, "expected a duration like 2h or 30m"),
])
def test_a_duration_that_is_not_one_says_so(text: str | int | bool, words: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert words in str(caught.value)


def test_nan_is_not_a_duration() -> None:
    # YAML's .nan is a float; a timeout of NaN seconds would never fire and never compare.
    with pytest.raises(ValueError, match="duration"):
        parse_duration(math.nan)


@pytest.mark.parametrize("n, text", [
    (None, "n/a"),
    (0, "0 B"),
    (1023, "1023 B"),
    (1024, "1.0 KiB"),
    (1536, "1.5 KiB"),
    (20 * GiB, "20.0 GiB"),
    (80 * 1000**3, "74.5 GiB"),
    (5 * TiB, "5.0 TiB"),
    (2048 * TiB, "2048.0 TiB"),
])
def test_sizes_are_printed_in_binary_units(n: int | None, text: str) -> None:
    assert format_size(n) == text


def test_a_typed_size_prints_back_as_typed() -> None:
    assert format_size(parse_size("20GiB")) == "20.0 GiB"
    assert format_size(parse_size("512MiB")) == "512.0 MiB"


@pytest.mark.parametrize("seconds, text", [
    (None, "-"),
    (0, "0s"),
    (12.7, "12s"),
    (59, "59s"),
    (60, "1m00s"),
    (245, "4m05s"),
    (3600, "1h00m"),
    (3720, "1h02m"),
    (9000, "2h30m"),
    (90000, "25h00m"),
    (-5, "0s"),
])
def test_durations_are_printed_short(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text


def test_a_typed_duration_prints_back_as_typed() -> None:
    assert format_duration(parse_duration("2h30m")) == "2h30m"
