"""What a column's DuckDB type says about how it can be compared: pure functions over type names.

A column is compared by what its values *measure*, not by the name of its
type: numbers of any width, points in time (DATE, TIMESTAMP of any unit,
TIMESTAMPTZ), times of day (TIME, TIMETZ) and durations (INTERVAL) are all
compared as numbers on one scale per measure. So a DATE read from a CSV and
the TIMESTAMP of the same data in a Parquet file compare equal, and a date
column read as VARCHAR on one side is parsed as the other side's measure
(the engine then checks that every value parses). Two different measures (a
number and a time, a time of day and a timestamp) cannot be compared, and
the refusal says so in one sentence. docs/drift.md has the scales.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER, TIME, TIME_OF_DAY, DURATION = "number", "time", "time of day", "duration"
TEXT, OTHER = "text", "other"
MEASURES = (NUMBER, TIME, TIME_OF_DAY, DURATION)

_CLASSES = (
    (NUMBER, re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|"
                        r"FLOAT|DOUBLE|REAL|DECIMAL.*|NUMERIC.*|INT[1248]?|FLOAT[48]|BIGNUM|VARINT)$")),
    (TIME, re.compile(r"^(DATE|TIMESTAMP(_S|_MS|_NS|_US)?|TIMESTAMP(\(\d\))? WITH TIME ZONE|TIMESTAMPTZ(_NS)?|DATETIME)$")),
    (TIME_OF_DAY, re.compile(r"^(TIME(_NS)?|TIME(\(\d\))? WITH TIME ZONE|TIMETZ)$")),
    (DURATION, re.compile(r"^INTERVAL$")),
    (TEXT, re.compile(r"^(VARCHAR|TEXT|STRING|CHAR|BPCHAR)(\(\d+\))?$")),
)

#: The type that text is parsed into for each measure (TIMESTAMPTZ: an offset in the text is honoured,
#: text without one is UTC, and a time of day in the text is kept, which a cast to DATE would drop).
PARSE_AS = {NUMBER: "DOUBLE", TIME: "TIMESTAMPTZ", TIME_OF_DAY: "TIME", DURATION: "INTERVAL"}

#: The scale each measure is compared on (stored statistics and histogram edges are in it).
SCALES = {NUMBER: "the values themselves", TIME: "seconds since 1970-01-01 00:00 UTC",
          TIME_OF_DAY: "seconds since midnight", DURATION: "seconds"}

_PLURAL = {NUMBER: "numbers", TIME: "times", TIME_OF_DAY: "times of day", DURATION: "durations"}
_ARTICLE = {NUMBER: "a number", TIME: "a point in time", TIME_OF_DAY: "a time of day", DURATION: "a duration",
            TEXT: "text", OTHER: "neither a number nor a time"}


def value_class(duck_type: str | None) -> str:
    """number, time, time of day, duration, text or other, from a DuckDB type name."""
    name = (duck_type or "").strip().upper()
    for cls, pattern in _CLASSES:
        if pattern.match(name):
            return cls
    return OTHER


def is_measure(duck_type: str | None) -> bool:
    """True for a type whose values are compared as numbers (numbers, times, times of day, durations)."""
    return value_class(duck_type) in MEASURES


def is_numeric_type(duck_type: str | None) -> bool:
    return value_class(duck_type) == NUMBER


def plural(measure: str) -> str:
    return _PLURAL[measure]


def to_double_sql(expr: str, measure: str) -> str:
    """SQL for the value of ``expr`` (of this measure) on its scale as a DOUBLE; an infinite date is ±inf."""
    if measure == NUMBER:
        return f"cast({expr} as double)"
    if measure == TIME:  # isinf has no TIMESTAMPTZ_NS overload: ask it of the TIMESTAMPTZ
        zoned = f"cast({expr} as timestamptz)"
        return (f"case when isinf({zoned}) then (case when {zoned} > 'epoch' then 'inf'::double else '-inf'::double "
                f"end) else epoch({expr}) end")
    return f"epoch({expr})"


def label_sql(value: str, measure: str) -> str:
    """SQL for a category label of a DOUBLE on this measure's scale (so a date category reads as a date)."""
    if measure == TIME:
        text = f"cast(cast(to_timestamp({value}) as timestamp) as varchar)"
    elif measure == TIME_OF_DAY:
        text = f"cast(time '00:00:00' + to_microseconds(cast(round({value} * 1e6) as bigint)) as varchar)"
    elif measure == DURATION:
        text = f"cast(to_microseconds(cast(round({value} * 1e6) as bigint)) as varchar)"
    else:
        return f"cast({value} as varchar)"
    return f"case when isfinite({value}) then {text} else cast({value} as varchar) end"


@dataclass(frozen=True)
class Comparison:
    """How a column with these two types is compared.

    measure: the scale both sides are compared on, or None for categories of text.
    parse_ref / parse_cur: that side is text to be parsed as ``measure`` (the engine checks every value).
    note: what the report says about the types (None when they are the same).
    refusal: the sentence saying why the two cannot be compared (then nothing else applies).
    """

    measure: str | None
    parse_ref: bool = False
    parse_cur: bool = False
    note: str | None = None
    refusal: str | None = None


def _described(duck_type: str) -> str:
    cls = value_class(duck_type)
    return f"{duck_type} ({_ARTICLE[cls]})"


def compare(ref_type: str, cur_type: str) -> Comparison:
    """The comparison of two column types; a refusal where their values measure different things."""
    ref_cls, cur_cls = value_class(ref_type), value_class(cur_type)
    differ = f"{ref_type} in the reference, {cur_type} in the current data"
    if ref_cls == cur_cls:
        measure = ref_cls if ref_cls in MEASURES else None
        if ref_type == cur_type:
            return Comparison(measure)
        what = plural(measure) if measure else "text"
        extra = ""
        if measure == TIME and (_has_zone(ref_type) != _has_zone(cur_type)):
            extra = ", a time without a time zone taken as UTC"
        return Comparison(measure, note=f"types differ ({differ}): both compared as {what}{extra}")
    if {ref_cls, cur_cls} == {TIME_OF_DAY, DURATION}:  # a CSV file writes both as HH:MM:SS and reads back TIME
        clock = ref_type if ref_cls == TIME_OF_DAY else cur_type
        return Comparison(DURATION, note=f"types differ ({differ}): the {clock} is taken as the duration since "
                                         "midnight (a CSV file writes both alike), both compared as durations")
    if ref_cls == TEXT and cur_cls in MEASURES:
        return Comparison(cur_cls, parse_ref=True)
    if cur_cls == TEXT and ref_cls in MEASURES:
        return Comparison(ref_cls, parse_cur=True)
    if ref_cls in MEASURES or cur_cls in MEASURES:
        return Comparison(None, refusal=f"type changed from {_described(ref_type)} in the reference to "
                                        f"{_described(cur_type)} in the current data: they cannot be compared "
                                        "(counted as drifted)")
    return Comparison(None, note=f"types differ ({differ}): both compared as text")


def _has_zone(duck_type: str) -> bool:
    name = duck_type.upper()
    return "TIME ZONE" in name or "TZ" in name  # TIMESTAMPTZ, TIMESTAMPTZ_NS, TIMETZ
