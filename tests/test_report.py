import base64
import io
import json
import re

import numpy as np
import pandas as pd
import xarray as xr
from PIL import Image

from cpzarr.report import cells_per_well_grids, plot_cells_per_well, well_position, write_report


def test_well_position():
    assert well_position("A01") == (0, 0)
    assert well_position("P24") == (15, 23)
    assert well_position("b3") == (1, 2)


def test_heat_map_layout_puts_each_well_at_its_position():
    counts = xr.DataArray([[0.0, 7.0], [np.nan, 3.0]], dims=("plate", "well"),
                          coords={"plate": ["P1", "P2"], "well": ["A01", "C05"]})
    grids = cells_per_well_grids(counts)
    g = grids["P1"]
    assert g.shape == (3, 5)  # A..C, 1..5: up to the last row and column holding a well
    assert g[2, 4] == 7.0 and g[0, 0] == 0.0
    assert np.isnan(g).sum() == 3 * 5 - 2
    assert np.isnan(grids["P2"][0, 0]) and grids["P2"][2, 4] == 3.0


def test_report_is_self_contained_with_sections_and_metrics(tmp_path):
    counts = xr.DataArray([[5.0, 9.0]], dims=("plate", "well"), coords={"plate": ["P1"], "well": ["A01", "B02"]})
    metrics = pd.DataFrame({"profiles": ["raw", "spherized"], "metric": ["mAP", "mAP"], "value": [0.25, 0.5]})
    path = write_report(
        tmp_path,
        summary={"plates": 1, "wells": 2, "cells": 14},
        metrics=metrics,
        figures={"cells": [("Cells per well", plot_cells_per_well(counts))]},
        provenance={"cpzarr": "0.1.0", "config": {"features": {"model": "classical"}}},
        timings={"ingest": 1.5},
    )
    text = path.read_text()
    assert 'src="http' not in text and "src='http" not in text
    for heading in ("Dataset", "Cells per well", "Headline metrics", "Run details", "Timings"):
        assert heading in text
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert len(images) == 1
    img = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert img.format == "PNG" and img.size[0] > 100
    back = pd.read_csv(tmp_path / "metrics.csv")
    pd.testing.assert_frame_equal(back, metrics)
    assert json.loads((tmp_path / "metrics.json").read_text())[1]["value"] == 0.5
    assert not list(tmp_path.glob(".*.tmp"))
