"""Sample queries never run code (issue 21 item 4) and mean what pandas' query means."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr.errors import InputError
from cpzarr.query import evaluate_query, parse_query


@pytest.fixture
def frame():
    return pd.DataFrame({
        "plate": ["P1", "P1", "P2", "P2", "P3", "P3"],
        "control": ["negcon", "trt", "trt", "negcon", "trt", "trt"],
        "compound": ["DMSO", "a", "b", "DMSO", "a", np.nan],
        "dose": [0.0, 1.0, 10.0, 0.0, 3.0, 10.0],
        "site": np.array([1, 2, 3, 1, 2, 3], dtype=np.int64),
        "flag": [True, False, True, False, False, True],
    })


SAFE = [
    "control == 'negcon'",
    'control != "negcon"',
    "dose > 1",
    "dose >= 1 and dose < 10",
    "1 <= dose < 10",
    "dose == 10.0 or site == 1",
    "not (control == 'negcon')",
    "~(control == 'negcon') & (plate == 'P1')",
    "(control == 'negcon') | (dose >= 10)",
    "compound in ['a', 'b']",
    "compound not in ['a', 'b']",
    "compound == ['a', 'DMSO']",
    "plate in ['P1'] and not compound in ['a']",
    "flag",
    "flag and dose > 0",
    "dose > -1e-3",
    "compound == 'a' or compound != 'a'",
]


@pytest.mark.parametrize("query", SAFE)
def test_same_rows_as_pandas(frame, query):
    expected = frame.eval(query).to_numpy(dtype=bool)  # pandas itself, on trusted strings only
    np.testing.assert_array_equal(evaluate_query(query, frame), expected)


def test_metadata_prefix_both_ways(frame):
    expected = (frame["control"] == "negcon").to_numpy()
    np.testing.assert_array_equal(evaluate_query("Metadata_control == 'negcon'", frame), expected)
    prefixed = frame.rename(columns=lambda c: f"Metadata_{c}")
    np.testing.assert_array_equal(evaluate_query("control == 'negcon'", prefixed), expected)
    np.testing.assert_array_equal(evaluate_query("`control` == 'negcon'", frame), expected)


EXPLOITS = [
    "@pd.io.common.os.system('touch {p}') == 0 or control == 'negcon'",
    "control.__class__ == 'x'",
    "__import__('os').system('touch {p}') == 0",
    "open('{p}', 'w')",
    "control == 'negcon' or (lambda: 1)",
    "compound[0] == 'a'",
    "[x for x in plate]",
    "plate == plate.str.upper()",
]


@pytest.mark.parametrize("template", EXPLOITS)
def test_code_is_refused(frame, tmp_path, template):
    target = tmp_path / "pwned.txt"
    query = template.format(p=target)
    with pytest.raises(InputError, match="query"):
        evaluate_query(query, frame)
    assert not target.exists()


@pytest.mark.parametrize("query, message", [
    ("@x == 1", "'@'"),
    ("plate.upper == 'x'", "attribute access"),
    ("len(plate) == 2", "calls are not allowed"),
    ("nosuch == 1", "'nosuch', which is not a column"),
    ("dose < 'a'", "cannot compare"),
    ("dose", "not True/False"),
    ("control == 'negcon' and", "ends too early"),
    ("control == 'negcon", "unterminated string"),
    ("", "empty query"),
])
def test_errors_say_what(frame, query, message):
    with pytest.raises(InputError, match=message):
        evaluate_query(query, frame)


def test_parse_tree():
    assert parse_query("not a in [1, 'x']") == ("not", ("cmp", [("col", "a"), ("list", (1, "x"))], ["in"]))


def _profiles(tmp_path):
    return xr.DataArray(
        np.arange(8.0).reshape(4, 2), dims=("sample", "feature"),
        coords={"control": ("sample", ["negcon", "trt", "trt", "negcon"]),
                "plate": ("sample", ["P1", "P1", "P2", "P2"]), "feature": ["f1", "f2"]},
    )


def test_every_entry_point_refuses_the_exploit(tmp_path, monkeypatch):
    """The issue's exploit ran ``id > pwned.txt`` through samples, mask and split_query."""
    from cpzarr.evaluate._similarity import _sample_mask
    from cpzarr.profiles import normalize
    from cpzarr.profiles._samples import sample_mask
    from cpzarr.train._data import split_cells

    monkeypatch.chdir(tmp_path)
    evil = "@pd.io.common.os.system('echo pwned > pwned.txt') == 0 or control == 'negcon'"
    p = _profiles(tmp_path)
    for call in (
        lambda: sample_mask(p, evil),
        lambda: normalize(p, samples=evil),
        lambda: _sample_mask(p, evil),
        lambda: split_cells(
            pd.DataFrame({"control": ["negcon", "trt"], "compound": ["a", "b"], "well": ["A01", "A02"]}),
            split="custom", split_query=evil,
        ),
    ):
        with pytest.raises(InputError):
            call()
        assert not (tmp_path / "pwned.txt").exists()
    np.testing.assert_array_equal(sample_mask(p, "Metadata_control == 'negcon'"), [True, False, False, True])


def test_cli_samples_refuses_code(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cpzarr.cli import main
    from cpzarr.profiles import write_profiles

    monkeypatch.chdir(tmp_path)
    write_profiles(_profiles(tmp_path), tmp_path / "in.parquet")
    evil = "@pd.io.common.os.system('echo pwned > pwned.txt') == 0 or control == 'negcon'"
    result = CliRunner().invoke(main, ["profiles", "normalize", "in.parquet", "out.parquet", "--samples", evil])
    assert result.exit_code != 0
    assert "'@'" in result.output
    assert not (tmp_path / "pwned.txt").exists()


def test_no_pandas_eval_or_query_left_in_the_package():
    """Every query goes through cpzarr.query; a new DataFrame.eval/query call would run code again."""
    import re
    from pathlib import Path

    import cpzarr

    root = Path(cpzarr.__file__).parent
    found = [
        f"{path.relative_to(root)}:{i}: {line.strip()}"
        for path in sorted(root.rglob("*.py"))
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.(eval|query)\(", line) and "doctest" not in line
    ]
    assert not found, "\n".join(found)
