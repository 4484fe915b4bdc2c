"""copairs' mAP modes on the real LINCS plate, checked against copairs 0.5.5 run in the test.

AP per query, n_pos/n_total, per-query p-values and mAP per group are compared bit for bit
(copairs with a fresh null cache and the same seed); BH-corrected p-values to 1e-15 (copairs
uses statsmodels, cpzarr its own Benjamini–Hochberg).
"""

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import cpzarr.evaluate as ev
from cpzarr.errors import InputError

PLATE = "lincs_level4b_SQ00015054/SQ00015054_normalized_feature_select.csv.gz"
NULL, SEED = 1000, 3


@pytest.fixture(scope="module")
def plate(shared_data):
    """The plate as (Pycytominer frame, features, DataArray with Metadata_ coordinates)."""
    frame = pd.read_csv(shared_data / PLATE)
    meta = [c for c in frame if c.startswith("Metadata_")]
    features = [c for c in frame if c not in meta]
    profiles = xr.DataArray(
        frame[features].to_numpy(np.float64),
        dims=("sample", "feature"),
        coords={c: ("sample", frame[c].to_numpy()) for c in meta},
    )
    return frame, frame[features].to_numpy(np.float64), profiles


@pytest.fixture(scope="module")
def copairs():
    return pytest.importorskip("copairs.map")


def assert_same_ap(got, peer):
    np.testing.assert_array_equal(got["n_pos_pairs"], peer["n_pos_pairs"])
    np.testing.assert_array_equal(got["n_total_pairs"], peer["n_total_pairs"])
    np.testing.assert_array_equal(got["average_precision"], peer["average_precision"])


def assert_same_map(got, peer, on):
    both = got.merge(peer, on=on, suffixes=("", "_copairs"))
    assert len(both) == len(got) == len(peer)
    for column in ("mean_average_precision", "p_value"):
        np.testing.assert_array_equal(both[column], both[column + "_copairs"])
    np.testing.assert_allclose(both["corrected_p_value"], both["corrected_p_value_copairs"],
                               rtol=0, atol=1e-15)
    np.testing.assert_array_equal(both["below_corrected_p"], both["below_corrected_p_copairs"])


def test_pair_rules_equal_copairs(plate, copairs, tmp_path):
    """Replicates = same compound at another dose; negatives = other compounds at the same dose."""
    frame, features, profiles = plate
    treated = (frame["Metadata_pert_type"] == "trt").to_numpy()
    rows = frame[treated].reset_index(drop=True)
    rules = dict(pos_sameby=["Metadata_pert_id"], pos_diffby=["Metadata_mmoles_per_liter"],
                 neg_sameby=["Metadata_mmoles_per_liter"], neg_diffby=["Metadata_pert_id"])
    peer = copairs.average_precision(
        rows[["Metadata_pert_id", "Metadata_mmoles_per_liter"]], features[treated],
        distance="correlation", progress_bar=False, **rules,
    )
    from copairs.map.average_precision import p_values

    peer["p_value"] = p_values(peer, null_size=NULL, seed=SEED, progress_bar=False)
    # Metadata_ names and un-prefixed ones both name the same coordinates.
    got = ev.average_precision(
        profiles, mask="Metadata_pert_type == 'trt'", block_size=37, null_size=NULL, seed=SEED,
        pos_sameby=["pert_id"], pos_diffby=["Metadata_mmoles_per_liter"],
        neg_sameby=["mmoles_per_liter"], neg_diffby=["Metadata_pert_id"],
    )
    assert_same_ap(got, peer)
    np.testing.assert_array_equal(got["p_value"].astype(np.float32), peer["p_value"])
    peer_map = copairs.mean_average_precision(
        peer, ["Metadata_pert_id"], null_size=NULL, threshold=0.05, seed=SEED,
        progress_bar=False, cache_dir=tmp_path,
    )
    got_map = ev.mean_average_precision(groups="pert_id", ap=got, null_size=NULL, seed=SEED)
    assert_same_map(got_map, peer_map, "Metadata_pert_id")
    # One pass for a table: the same numbers computed from the profiles directly.
    direct = ev.mean_average_precision(profiles, mask=treated, null_size=NULL, seed=SEED, **rules)
    pd.testing.assert_frame_equal(direct, got_map)


def test_phenotypic_activity_equals_copairs(plate, copairs, tmp_path):
    frame, features, profiles = plate
    from copairs.map.average_precision import p_values
    from copairs.matching import assign_reference_index

    meta = assign_reference_index(frame[["Metadata_broad_sample", "Metadata_pert_type"]],
                                  "Metadata_pert_type == 'control'", reference_col="ref")
    columns = ["Metadata_broad_sample", "ref"]
    peer = copairs.average_precision(meta, features, columns, [], [], columns,
                                     distance="correlation", progress_bar=False)
    peer["p_value"] = p_values(peer, null_size=NULL, seed=SEED, progress_bar=False)
    peer = peer[peer["Metadata_pert_type"] == "trt"].reset_index(drop=True)
    peer_map = copairs.mean_average_precision(
        peer, ["Metadata_broad_sample"], null_size=NULL, threshold=0.05, seed=SEED,
        progress_bar=False, cache_dir=tmp_path,
    )
    got = ev.phenotypic_activity(profiles, "broad_sample", "pert_type == 'control'",
                                 null_size=NULL, seed=SEED, block_size=50)
    ap = got["average_precision"]
    assert_same_ap(ap, peer)
    np.testing.assert_array_equal(ap["p_value"].astype(np.float32), peer["p_value"])
    assert_same_map(got["mean_average_precision"], peer_map, "Metadata_broad_sample")
    # Every treatment's replicates are ranked against the 24 DMSO wells only.
    np.testing.assert_array_equal(ap["n_total_pairs"] - ap["n_pos_pairs"], 24)
    assert ev.fraction_retrieved(got["mean_average_precision"]) == pytest.approx(
        peer_map["below_corrected_p"].mean()
    )


def test_phenotypic_consistency_multilabel_equals_copairs(plate, copairs, tmp_path):
    """Consensus per compound (median); MOAs joined by '|' are several labels."""
    frame, _, _ = plate
    features = [c for c in frame if not c.startswith("Metadata_")]
    treated = frame[frame["Metadata_pert_type"] == "trt"]
    consensus = treated.groupby("Metadata_broad_sample", sort=True).agg(
        {**{f: "median" for f in features}, "Metadata_moa": "first"}
    ).reset_index()
    assert consensus["Metadata_moa"].str.contains("|", regex=False).any()
    profiles = xr.DataArray(
        consensus[features].to_numpy(np.float64), dims=("sample", "feature"),
        coords={c: ("sample", consensus[c].to_numpy())
                for c in ("Metadata_broad_sample", "Metadata_moa")},
    )
    annotated = consensus[consensus["Metadata_moa"].notna()].reset_index(names="row")
    meta = annotated[["row"]].copy()
    meta["Metadata_moa"] = annotated["Metadata_moa"].str.split("|")
    peer = copairs.multilabel.average_precision(
        meta, annotated[features].to_numpy(), ["Metadata_moa"], [], [], ["Metadata_moa"],
        multilabel_col="Metadata_moa", distance="correlation", progress_bar=False,
    )
    peer_map = copairs.mean_average_precision(
        peer, ["Metadata_moa"], null_size=NULL, threshold=0.05, seed=SEED, progress_bar=False,
        cache_dir=tmp_path,
    )
    got = ev.phenotypic_consistency(profiles, "moa", multilabel=True, null_size=NULL, seed=SEED)
    ap = got["average_precision"]
    assert set(ap["sample"]) == set(annotated["row"])  # NaN MOAs left out
    ap = ap[ap["n_pos_pairs"] > 0].sort_values(["sample", "Metadata_moa"]).reset_index(drop=True)
    peer = peer.sort_values(["row", "Metadata_moa"]).reset_index(drop=True)
    np.testing.assert_array_equal(ap["sample"], peer["row"])
    np.testing.assert_array_equal(ap["Metadata_moa"], peer["Metadata_moa"])
    assert_same_ap(ap, peer)
    assert_same_map(got["mean_average_precision"], peer_map, "Metadata_moa")


def test_nscb_equals_dense_reference(plate):
    """NSCB by hand: neighbours of the same compound or the same dose (standing in for batch on
    this one-plate set) are dropped; AP and 1-NN accuracy from a dense correlation matrix."""
    frame, features, profiles = plate
    keep = (frame["Metadata_pert_type"] == "trt") & frame["Metadata_moa"].notna()
    got = ev.nscb(profiles, "Metadata_moa", compound="pert_id", batch="mmoles_per_liter",
                  mask=keep.to_numpy(), null_size=100)
    rows = frame[keep].reset_index(drop=True)
    sims = np.corrcoef(features[keep.to_numpy()]).astype(np.float32)
    moa, cpd = rows["Metadata_moa"].to_numpy(), rows["Metadata_pert_id"].to_numpy()
    dose = rows["Metadata_mmoles_per_liter"].to_numpy()
    expected_ap, expected_hit = [], []
    for i in range(len(rows)):
        allowed = (cpd != cpd[i]) & (dose != dose[i])
        allowed[i] = False
        cand = np.flatnonzero(allowed)
        key = np.float32(1) - sims[i, cand]
        positive = moa[cand] == moa[i]
        order = np.lexsort((~positive, key))  # key ascending, positives first on ties
        rel = positive[order]
        if not rel.any():
            expected_ap.append(np.nan)
            expected_hit.append(False)
            continue
        hits = np.cumsum(rel)
        expected_ap.append(np.mean((hits / np.arange(1, rel.size + 1))[rel]))
        expected_hit.append(bool(rel[0]))
    ap = got["average_precision"]
    np.testing.assert_allclose(ap["average_precision"], expected_ap, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(ap["nearest_is_positive"], expected_hit)
    assert got["accuracy"] == pytest.approx(np.mean(np.array(expected_hit)[~np.isnan(expected_ap)]))


def test_metadata_prefix_everywhere(plate):
    """Pycytominer names in groups and queries give the same tables as the coordinates' names."""
    frame, _, profiles = plate
    plain = profiles.rename({c: c.removeprefix("Metadata_") for c in profiles.coords})
    a = ev.precision_recall(plain, "moa", k=[1, 5], mask="Metadata_pert_type != 'control'")
    b = ev.precision_recall(profiles, "moa", k=[1, 5], mask="pert_type != 'control'")
    c = ev.precision_recall(plain, "Metadata_moa", k=[1, 5], mask="pert_type != 'control'")
    np.testing.assert_array_equal(a["precision"], b["precision"])
    np.testing.assert_array_equal(a["precision"], c["precision"])
    with pytest.raises(InputError, match="known"):
        ev.precision_recall(plain, "Metadata_nothing")


def cytominer_pooled_reference(frame, features, groups, ks):
    """Cytominer-eval's grouped precision/recall, written from its documented algorithm:
    Pearson between every ordered pair of distinct profiles (pandas), pairs labelled replicate
    when all ``groups`` are equal as strings, sorted by similarity descending, grouped by the
    query's ``groups``; top K pairs of each group."""
    sims = pd.DataFrame(features).T.corr(method="pearson").to_numpy()
    labels = frame[groups].astype(str).agg("\x1f".join, axis=1).to_numpy()
    n = len(frame)
    a, b = np.nonzero(~np.eye(n, dtype=bool))
    pairs = pd.DataFrame({"a": a, "sim": sims[a, b], "rep": labels[a] == labels[b],
                          "group": labels[a]})
    pairs = pairs.sort_values("sim", ascending=False, kind="mergesort")
    rows = []
    for group, table in pairs.groupby("group", sort=True):
        for k in ks:
            found = table["rep"].iloc[:k].sum()
            total = table["rep"].sum()
            rows.append((group, k, found / k, found / total if total else np.nan))
    return pd.DataFrame(rows, columns=["group", "k", "precision", "recall"])


@pytest.mark.parametrize("groups", [["Metadata_moa"], ["Metadata_pert_id", "Metadata_moa"]])
def test_pooled_precision_recall_equals_cytominer_rule(plate, groups):
    frame, features, profiles = plate
    ks = [1, 5, 10, 50, 2000]
    expected = cytominer_pooled_reference(frame, features, groups, ks)
    got = ev.precision_recall(profiles, groups, k=ks, pooled=True, block_size=64)
    assert len(got) == len(expected)
    key = got[groups].astype(str).agg("\x1f".join, axis=1)
    np.testing.assert_array_equal(key, expected["group"])
    np.testing.assert_array_equal(got["k"], expected["k"])
    np.testing.assert_array_equal(got["precision"], expected["precision"])
    np.testing.assert_array_equal(got["recall"], expected["recall"])
    # Not the per-query mean: the "only a few (MOA, k) rows agree".
    per_query = ev.precision_recall(profiles, groups, k=ks).groupby(groups + ["k"], dropna=False)
    assert not np.allclose(per_query["precision"].mean().to_numpy(), got["precision"])


def cytominer_mp_reference(frame, features, replicate, controls, n_permutations, seed):
    """Cytominer-eval's mp-value from its documented algorithm with scikit-learn: PCA keeping
    90 % of the variance (full SVD) scaled by explained-variance ratio, squared Mahalanobis
    distance (EmpiricalCovariance of the controls) of the replicates' mean, permutations from
    NumPy's global generator in groupby order."""
    from sklearn.covariance import EmpiricalCovariance
    from sklearn.decomposition import PCA

    control_rows = features[frame[replicate].isin(controls).to_numpy()]
    np.random.seed(seed)
    out = {}
    for key, index in frame.groupby(replicate).groups.items():
        pert = features[np.asarray(index)]
        stacked = np.concatenate([pert, control_rows])
        pca = PCA(n_components=0.9, svd_solver="full")
        array = pca.fit_transform(stacked) * pca.explained_variance_ratio_

        def distance(p, c):
            return EmpiricalCovariance().fit(c).mahalanobis(p.mean(axis=0)[None])[0]

        n = len(pert)
        observed = distance(array[:n], array[n:])
        mask = np.zeros(len(array), dtype=bool)
        mask[:n] = True
        null = []
        for _ in range(n_permutations):
            chosen = np.random.permutation(mask)
            null.append(distance(array[chosen], array[~chosen]))
        out[key] = (observed, np.mean(np.array(null) >= observed))
    return out


def test_mp_value_equals_cytominer_rule(plate):
    """Same seed, same permutations: distances to 1e-8 relative, mp-values within the
    documented tolerance (a permutation tying the observed distance to rounding may flip,
    1/100 each); on this plate they are equal."""
    frame, features, profiles = plate
    # A subset keeps the test fast: DMSO and the compounds of the first 12 MOAs.
    moas = sorted(frame["Metadata_moa"].dropna().unique())[:12]
    chosen = (frame["Metadata_pert_type"] == "control") | frame["Metadata_moa"].isin(moas)
    sub = frame[chosen].reset_index(drop=True)
    expected = cytominer_mp_reference(sub, features[chosen.to_numpy()], "Metadata_broad_sample",
                                      ["DMSO"], 100, seed=11)
    got = ev.mp_value(profiles, "broad_sample", "broad_sample == 'DMSO'", mask=chosen.to_numpy(),
                      n_permutations=100, seed=11)
    assert list(got["Metadata_broad_sample"]) == list(expected)
    distances = np.array([expected[k][0] for k in got["Metadata_broad_sample"]])
    mp = np.array([expected[k][1] for k in got["Metadata_broad_sample"]])
    np.testing.assert_allclose(got["distance"], distances, rtol=1e-8)
    np.testing.assert_allclose(got["mp_value"], mp, rtol=0, atol=0.01)
    assert (got["mp_value"] == mp).mean() >= 0.95
    # Significant compounds exist and DMSO against itself is not one of them.
    dmso = got.loc[got["Metadata_broad_sample"] == "DMSO", "mp_value"].item()
    assert dmso > 0.05 and (got["mp_value"] < 0.05).any()


def test_well_position_effect_finds_a_column_effect(copairs):
    """Controls given a per-column offset: the column task's mAP is far above its random
    expectation, without the offset it is not; the column mAP equals copairs' on the same
    rules. (The synthetic layout puts DMSO in few columns, so rows are confounded with them.)"""
    from cpzarr.synthetic import make_profiles

    profiles = make_profiles(n_plates=4, n_batches=2, n_negcon=24, n_compounds=40,
                             n_replicates=4, n_moas=8, n_features=60, n_samples=None, seed=3)
    wells = profiles["well"].values.astype(str)
    column = np.array([int(w[1:]) for w in wells])
    rng = np.random.default_rng(0)
    offsets = rng.normal(0, 3.0, size=(column.max() + 1, profiles.sizes["feature"]))
    shifted = profiles.copy(data=profiles.values + offsets[column])
    clean = ev.well_position_effect(profiles, null_size=200).set_index("factor")
    dirty = ev.well_position_effect(shifted, null_size=200).set_index("factor")
    assert abs(clean.loc["column", "excess"]) < 0.1
    assert dirty.loc["column", "excess"] > 0.3
    assert dirty.loc["column", "fraction_retrieved"] >= 0.8
    assert dirty.loc["well", "excess"] > 0.3  # same well on other plates = same column
    # The column task is copairs' same-column rule among the controls.
    controls = profiles["control"].values == "negcon"
    meta = pd.DataFrame({"column": column[controls]})
    peer = copairs.average_precision(meta, shifted.values[controls], ["column"], [], [],
                                     ["column"], distance="correlation", progress_bar=False)
    peer = peer[peer["n_pos_pairs"] > 0]
    assert dirty.loc["column", "mean_average_precision"] == pytest.approx(
        peer["average_precision"].mean(), abs=1e-12)
    assert dirty.loc["column", "n_queries"] == len(peer)


def test_fraction_retrieved_of_groups_and_of_queries():
    """Hand-worked: 2 of 3 groups below 0.05; per query, the row without positives is ignored."""
    groups = pd.DataFrame({"corrected_p_value": [0.01, 0.04, 0.2],
                           "below_corrected_p": [True, True, False]})
    assert ev.fraction_retrieved(groups) == pytest.approx(2 / 3)
    assert ev.fraction_retrieved(groups, threshold=0.02) == pytest.approx(1 / 3)
    queries = pd.DataFrame({"corrected_p_value": [0.01, np.nan, 0.5, 0.03],
                            "below_corrected_p": [True, False, False, True]})
    assert ev.fraction_retrieved(queries) == pytest.approx(2 / 3)


def test_multilabel_default_negatives_share_no_label():
    """Hand-worked: labels a|b, a, b, c. Query 0 with label a: positive 1, negatives = those
    sharing no label with 0 = {3}; sample 2 (label b) is neither for label a."""
    values = np.array([[1.0, 0.0, 0.2], [0.9, 0.1, 0.0], [0.0, 1.0, 0.3], [0.2, 0.1, 1.0]])
    profiles = xr.DataArray(values, dims=("sample", "feature"),
                            coords={"moa": ("sample", ["a|b", "a", "b", "c"])})
    ap = ev.average_precision(profiles, "moa", multilabel="moa", method="cosine")
    row = ap[(ap["sample"] == 0) & (ap["moa"] == "a")].iloc[0]
    assert (row["n_pos_pairs"], row["n_total_pairs"]) == (1, 2)
    row = ap[(ap["sample"] == 1) & (ap["moa"] == "a")].iloc[0]
    # Sample 1 (label a): positive 0; negatives share no label with it: 2 and 3.
    assert (row["n_pos_pairs"], row["n_total_pairs"]) == (1, 3)
    assert row["average_precision"] == 1.0  # 0 is by far its most similar partner
