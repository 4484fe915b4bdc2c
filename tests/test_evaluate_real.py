"""cpzarr.evaluate on a real LINCS plate against copairs and plain dense references."""

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import stats

import cpzarr.evaluate as ev

PLATE = "lincs_level4b_SQ00015054/SQ00015054_normalized_feature_select.csv.gz"


@pytest.fixture(scope="module")
def plate(shared_data):
    """The Level-4b plate as (Pycytominer frame, DataArray with un-prefixed coordinates)."""
    frame = pd.read_csv(shared_data / PLATE)
    meta = [c for c in frame if c.startswith("Metadata_")]
    features = [c for c in frame if c not in meta]
    profiles = xr.DataArray(
        frame[features].to_numpy(np.float64),
        dims=("sample", "feature"),
        coords={"feature": features}
        | {c.removeprefix("Metadata_"): ("sample", frame[c].to_numpy()) for c in meta},
        name="profiles",
    )
    return frame, profiles


GROUPS = ["broad_sample", "moa"]


def dense_reference(values, labels):
    """Pearson matrix (exactly symmetric) and string-equality of labels, self excluded."""
    sims = np.corrcoef(values)
    sims = np.triu(sims, 1)
    sims = sims + sims.T
    labels = np.asarray(labels).astype(str)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return sims, same


def stable_order(sims, i):
    """Neighbours of query i: similarity descending, then sample position; itself left out."""
    others = np.array([j for j in range(len(sims)) if j != i])
    return others[np.lexsort((others, -sims[i, others]))]


@pytest.mark.parametrize("group", GROUPS)
def test_precision_recall_equal_dense(plate, group):
    frame, profiles = plate
    keep = (frame["Metadata_pert_type"] != "control").to_numpy()
    ks = [1, 3, 5, 10, 50, 400]
    got = ev.precision_recall(profiles, group, k=ks, mask=keep, block_size=97)
    sims, same = dense_reference(profiles.values[keep], frame["Metadata_" + group][keep])
    n_pos = same.sum(axis=1)
    for k in ks:
        expected_p, expected_r = [], []
        for i in range(len(sims)):
            top = stable_order(sims, i)[:k]
            found = same[i, top].sum()
            expected_p.append(found / k)
            expected_r.append(found / n_pos[i] if n_pos[i] else np.nan)
        table = got[got["k"] == k]
        np.testing.assert_array_equal(table["sample"], np.flatnonzero(keep))
        np.testing.assert_allclose(table["precision"], expected_p, rtol=0, atol=1e-12)
        np.testing.assert_allclose(table["recall"], expected_r, rtol=0, atol=1e-12)


@pytest.mark.parametrize("group", GROUPS)
def test_precision_at_r_equal_dense(plate, group):
    frame, profiles = plate
    keep = (frame["Metadata_pert_type"] != "control").to_numpy()
    got = ev.average_precision(profiles, group, mask=keep)
    sims, same = dense_reference(profiles.values[keep], frame["Metadata_" + group][keep])
    expected = []
    for i in range(len(sims)):
        r = same[i].sum()
        expected.append(same[i, stable_order(sims, i)[:r]].sum() / r if r else np.nan)
    np.testing.assert_allclose(got["precision_at_r"], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("group", GROUPS)
def test_enrichment_equal_dense(plate, group):
    frame, profiles = plate
    keep = (frame["Metadata_pert_type"] != "control").to_numpy()
    percentiles = [99.5, 99.0, 98.5, 98.0, 97.5, 97.0, 50.0]
    got = ev.enrichment(profiles, group, percentiles, mask=keep, block_size=61)
    sims, same = dense_reference(profiles.values[keep], frame["Metadata_" + group][keep])
    off = ~np.eye(len(sims), dtype=bool)  # ordered pairs of distinct samples
    values, pair_same = sims[off], same[off]
    for p, row in zip(percentiles, got.itertuples()):
        threshold = np.quantile(values, p / 100)
        similar = values > threshold
        a = np.sum(similar & pair_same)
        b = np.sum(similar & ~pair_same)
        c = np.sum(~similar & pair_same)
        d = np.sum(~similar & ~pair_same)
        assert (row.same_above, row.different_above, row.same_below, row.different_below) == (
            a, b, c, d,
        )
        assert row.threshold == pytest.approx(threshold, abs=1e-12)
        assert row.odds_ratio == pytest.approx(a * d / (b * c), rel=1e-12)
        expected_p = stats.fisher_exact([[a, b], [c, d]], alternative="greater")[1]
        assert row.p_value == pytest.approx(expected_p, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize("group", GROUPS)
def test_hitk_equal_dense(plate, group):
    frame, profiles = plate
    keep = (frame["Metadata_pert_type"] != "control").to_numpy()
    percents = [1, 2, 5, 10, 25, 50, 100]
    hits, scores = ev.hitk(profiles, group, percents, mask=keep, block_size=50)
    sims, same = dense_reference(profiles.values[keep], frame["Metadata_" + group][keep])
    expected_hits = []
    for i in range(len(sims)):
        order = stable_order(sims, i)
        expected_hits.extend(np.flatnonzero(same[i, order]))
    np.testing.assert_array_equal(hits, expected_hits)
    n_queries, n_hits = len(sims), len(expected_hits)
    for p, row in zip(percents, scores.itertuples()):
        within = sum(h <= p * n_queries / 100 for h in expected_hits)
        assert row.score == within - np.floor(p * n_hits / 100)


def treated_with(frame, group):
    return ((frame["Metadata_pert_type"] != "control") & frame["Metadata_" + group].notna()).to_numpy()


@pytest.fixture(scope="module", params=GROUPS)
def copairs_result(request, plate, tmp_path_factory):
    """copairs 0.5.5 AP and mAP (fresh null cache) for one grouping, DMSO and NaN rows out."""
    copairs_map = pytest.importorskip("copairs.map")
    group = request.param
    frame, _ = plate
    rows = frame[treated_with(frame, group)].reset_index(drop=True)
    meta = rows[["Metadata_" + group]].rename(columns={"Metadata_" + group: group})
    features = rows[[c for c in frame if not c.startswith("Metadata_")]].to_numpy()
    ap = copairs_map.average_precision(
        meta, features, [group], [], [], [group], distance="correlation", progress_bar=False
    )
    maps = copairs_map.mean_average_precision(
        ap, [group], null_size=2000, threshold=0.05, seed=7, progress_bar=False,
        cache_dir=tmp_path_factory.mktemp("copairs"),
    )
    return group, ap, maps


@pytest.mark.parametrize("compare_width", [0, 100])
def test_map_equals_copairs(plate, copairs_result, compare_width, monkeypatch):
    from cpzarr.evaluate import _precision

    # Both ways of counting neighbours above a positive: sorted rows, and comparisons.
    monkeypatch.setattr(_precision, "_COMPARE_WIDTH", compare_width)
    group, peer, peer_map = copairs_result
    frame, profiles = plate
    ap = ev.average_precision(profiles, group, mask=treated_with(frame, group), block_size=40)
    got = ev.mean_average_precision(groups=group, ap=ap, null_size=2000, seed=7)
    np.testing.assert_allclose(ap["average_precision"], peer["average_precision"], atol=1e-9)
    np.testing.assert_array_equal(ap["n_pos_pairs"], peer["n_pos_pairs"])
    np.testing.assert_array_equal(ap["n_total_pairs"], peer["n_total_pairs"])
    both = got.merge(peer_map, on=group, suffixes=("", "_copairs"))
    assert len(both) == len(got) == len(peer_map)
    for column in ("mean_average_precision", "p_value", "corrected_p_value"):
        np.testing.assert_allclose(both[column], both[column + "_copairs"], atol=1e-9)


def test_similarity_equals_corrcoef(plate):
    _, profiles = plate
    got = ev.similarity(profiles, query=np.arange(384) < 20)
    np.testing.assert_allclose(got.values, np.corrcoef(profiles.values)[:20], atol=1e-12)
    assert got.dims == ("query", "sample")
