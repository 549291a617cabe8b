"""frames.py's column builders: the fast Arrow paths give what the value-by-value pandas paths give."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest

from evalledger.readers.frames import _object_array, _objects, _timestamps

RUNNER_TIMES = ["2026-11-23T10:00:00.000Z", "2026-11-23T10:00:00.123456Z", None, "2026-11-23T23:59:59.999Z"]
ODD_TIMES = ["2026-11-23T10:00:00+02:00", "2026-11-23T10:00:00.5+0130", "2026-11-23T10:00Z"]
UNREADABLE_FOR_ARROW = ["2026-11-23 10:00:00", "2026-11-23", "2026-11-23T10:00:00.1234567Z", "garbage", ""]


def pandas_times(values: list) -> pd.Series:
    """What frames did before the Arrow path, value by value."""
    return pd.Series(pd.to_datetime(pd.Series(values, dtype=object), utc=True, format="ISO8601", errors="coerce"))


@pytest.mark.parametrize("values", [RUNNER_TIMES, RUNNER_TIMES + ODD_TIMES, RUNNER_TIMES + UNREADABLE_FOR_ARROW,
                                    [None, None], UNREADABLE_FOR_ARROW])
def test_timestamps_match_pandas(values):
    got = pd.Series(_timestamps(pa.chunked_array([pa.array(values, type=pa.string())])))
    want = pandas_times(values)
    assert str(got.dtype) == "datetime64[us, UTC]"
    pd.testing.assert_series_equal(got, want.astype("datetime64[us, UTC]"), check_names=False)


def test_unreadable_timestamp_is_nat_and_the_rest_still_read():
    got = pd.Series(_timestamps(pa.chunked_array([pa.array(["2026-11-23T10:00:00.000Z", "garbage"])])))
    assert got[0] == pd.Timestamp("2026-11-23T10:00:00Z") and got.isna().tolist() == [False, True]


@pytest.mark.parametrize("plain,as_json", [
    (["4", None, "x"], [None, None, None]),           # all text: str straight from Arrow
    (["4", None, None], [None, "12", '["a", 1]']),    # numbers and lists from the JSON part: objects
    ([None, None], [None, None]),                     # nothing at all
])
def test_object_columns_match_the_python_values(plain, as_json):
    p = pa.chunked_array([pa.array(plain, type=pa.string())])
    j = pa.chunked_array([pa.array(as_json, type=pa.string())])
    got = pd.DataFrame({"c": _object_array(p, j)})["c"]
    want = pd.DataFrame({"c": pd.Series(_objects(p, j), dtype=object).array})["c"]
    assert got.dtype == want.dtype
    assert plain_values(got) == plain_values(want) == [json.loads(b) if b is not None else a
                                                         for a, b in zip(plain, as_json)]


def plain_values(col: pd.Series) -> list:
    return [None if v is None or (isinstance(v, float) and pd.isna(v)) else v for v in col]
