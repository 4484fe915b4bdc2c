"""Classical features against direct scikit-image / numpy computations and hand-worked values."""

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage as ndi
from skimage.draw import disk, ellipse
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops

from cpzarr.errors import InputError
from cpzarr.features.classic import classical, feature_names

BOX = 48
CENTRE = (BOX // 2, BOX // 2)


def _crops(images, channels=("DNA", "ER")):
    images = np.asarray(images)
    n = images.shape[0]
    return xr.DataArray(
        images,
        dims=("cell", "channel", "y", "x"),
        coords={"channel": list(channels), "plate": ("cell", ["P1"] * n), "site": ("cell", np.arange(n) + 1)},
    )


def _nucleus(shape=disk, *args):
    mask = np.zeros((BOX, BOX), bool)
    mask[shape(*args, shape=(BOX, BOX))] = True
    return mask


def _one(image, **kwargs):
    out = classical(_crops(image[None]), **kwargs)
    return out.isel(cell=0).to_series()


def test_disk_shape_equals_regionprops():
    nucleus = _nucleus(disk, CENTRE, 9)
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0][nucleus] = 0.8
    f = _one(img, compartments=["Nuclei"], scales=[3])
    (ref,) = regionprops(nucleus.astype(np.uint8))
    assert f["Nuclei_AreaShape_Area"] == nucleus.sum() == ref.area
    assert f["Nuclei_AreaShape_Perimeter"] == pytest.approx(ref.perimeter, rel=1e-6)
    assert f["Nuclei_AreaShape_Solidity"] == pytest.approx(ref.solidity, rel=1e-6)
    assert f["Nuclei_AreaShape_Eccentricity"] == pytest.approx(0, abs=1e-3)
    assert f["Nuclei_AreaShape_FormFactor"] == pytest.approx(4 * np.pi * ref.area / ref.perimeter**2, rel=1e-6)


def test_ellipse_eccentricity_closed_form():
    nucleus = _nucleus(ellipse, *CENTRE, 6, 15)  # semi-axes 6 (rows) and 15 (columns)
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0][nucleus] = 1.0
    f = _one(img, compartments=["Nuclei"], scales=[3])
    assert f["Nuclei_AreaShape_Eccentricity"] == pytest.approx(np.sqrt(1 - (6 / 15) ** 2), abs=0.02)
    assert f["Nuclei_AreaShape_MajorAxisLength"] == pytest.approx(30, rel=0.05)


def test_constant_channel_intensity():
    nucleus = _nucleus(disk, CENTRE, 8)
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0][nucleus] = 0.9
    img[1] = 0.37
    f = _one(img, compartments=["Nuclei"], scales=[3])
    for m in ("Mean", "Min", "Max", "LowerQuartile", "Median", "UpperQuartile"):
        assert f[f"Nuclei_Intensity_{m}Intensity_ER"] == pytest.approx(0.37, rel=1e-6)
    assert f["Nuclei_Intensity_StdIntensity_ER"] == pytest.approx(0, abs=1e-6)
    assert f["Nuclei_Intensity_IntegratedIntensity_ER"] == pytest.approx(0.37 * nucleus.sum(), rel=1e-5)
    assert f["Nuclei_Intensity_MassDisplacement_ER"] == pytest.approx(0, abs=1e-4)


def test_integer_images_use_cellprofiler_scale():
    nucleus = _nucleus(disk, CENTRE, 8)
    img = np.zeros((2, BOX, BOX), np.uint16)
    img[0][nucleus] = 60000
    img[1] = 13107  # 13107 / 65535 = 0.2
    f = _one(img, compartments=["Nuclei"], scales=[3])
    assert f["Nuclei_Intensity_MeanIntensity_ER"] == pytest.approx(0.2, rel=1e-6)


def test_intensity_statistics_equal_numpy():
    rng = np.random.default_rng(3)
    nucleus = _nucleus(disk, CENTRE, 10)
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0][nucleus] = 0.7
    img[1] = rng.random((BOX, BOX), dtype=np.float32)
    f = _one(img, compartments=["Nuclei"], scales=[3])
    pixels = img[1][nucleus].astype(np.float64)
    assert f["Nuclei_Intensity_IntegratedIntensity_ER"] == pytest.approx(pixels.sum(), rel=1e-5)
    assert f["Nuclei_Intensity_MeanIntensity_ER"] == pytest.approx(pixels.mean(), rel=1e-5)
    assert f["Nuclei_Intensity_StdIntensity_ER"] == pytest.approx(pixels.std(), rel=1e-4)
    q1, q2, q3 = np.quantile(pixels, [0.25, 0.5, 0.75])
    assert f["Nuclei_Intensity_LowerQuartileIntensity_ER"] == pytest.approx(q1, rel=1e-5)
    assert f["Nuclei_Intensity_MedianIntensity_ER"] == pytest.approx(q2, rel=1e-5)
    assert f["Nuclei_Intensity_UpperQuartileIntensity_ER"] == pytest.approx(q3, rel=1e-5)
    # Mass displacement: intensity-weighted centre minus the object's centre, written out in numpy.
    rows, cols = np.nonzero(nucleus)
    w = img[1][rows, cols].astype(np.float64)
    shift = np.hypot((rows * w).sum() / w.sum() - rows.mean(), (cols * w).sum() / w.sum() - cols.mean())
    assert f["Nuclei_Intensity_MassDisplacement_ER"] == pytest.approx(shift, rel=1e-4)


def test_mass_displacement_of_symmetric_and_shifted_objects():
    nucleus = _nucleus(disk, CENTRE, 10)
    yy, xx = np.mgrid[:BOX, :BOX]
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0][nucleus] = 0.8
    img[1] = np.exp(-((yy - CENTRE[0]) ** 2 + (xx - CENTRE[1]) ** 2) / 30.0)
    f = _one(img, compartments=["Nuclei"], scales=[3])
    assert f["Nuclei_Intensity_MassDisplacement_ER"] == pytest.approx(0, abs=1e-4)
    # All of the ER signal in one pixel 5 columns right of the centre: displacement 5.
    img[1] = 0
    img[1][CENTRE[0], CENTRE[1] + 5] = 1.0
    f = _one(img, compartments=["Nuclei"], scales=[3])
    assert f["Nuclei_Intensity_MassDisplacement_ER"] == pytest.approx(5, abs=1e-4)


def test_glcm_of_two_level_stripes_hand_values():
    # Vertical stripes of levels 51 and 153 (0.2 and 0.6 of 255) inside a square object.
    mask = np.zeros((BOX, BOX), bool)
    mask[10:38, 10:38] = True
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0] = 0.5
    img[1] = np.where(np.arange(BOX) % 2 == 0, 0.2, 0.6)[None, :]
    crop = _crops(img[None])
    masks = xr.DataArray(mask[None], dims=("cell", "y", "x"))
    f = classical(crop, masks=masks, compartments=["Nuclei"], scales=[1, 2], directions=[0, 2]).isel(cell=0)
    f = f.to_series()
    d = 153 - 51
    # Horizontal neighbours at distance 1 always differ: P(a, b) = P(b, a) = 1/2.
    assert f["Nuclei_Texture_Contrast_ER_1_00_256"] == pytest.approx(d**2)
    assert f["Nuclei_Texture_AngularSecondMoment_ER_1_00_256"] == pytest.approx(0.5)
    assert f["Nuclei_Texture_Entropy_ER_1_00_256"] == pytest.approx(1.0)
    assert f["Nuclei_Texture_Correlation_ER_1_00_256"] == pytest.approx(-1.0)
    assert f["Nuclei_Texture_InverseDifferenceMoment_ER_1_00_256"] == pytest.approx(1 / (1 + d**2))
    assert f["Nuclei_Texture_Variance_ER_1_00_256"] == pytest.approx((d / 2) ** 2)
    # At distance 2, and vertically, neighbours are equal.
    assert f["Nuclei_Texture_Contrast_ER_2_00_256"] == pytest.approx(0)
    assert f["Nuclei_Texture_Contrast_ER_1_02_256"] == pytest.approx(0)


def test_glcm_directions_follow_cellprofiler_codes():
    # Diagonal stripes two pixels wide, constant along the down-right diagonal (row - column fixed):
    # direction 01 (dy, dx = 1, 1) pairs equal pixels, direction 03 (1, -1) always crosses a stripe.
    rows, cols = np.mgrid[:BOX, :BOX]
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0] = 0.5
    img[1] = np.where((rows - cols) % 4 < 2, 0.2, 0.6)
    masks = xr.DataArray(np.ones((1, BOX, BOX), bool), dims=("cell", "y", "x"))
    f = classical(_crops(img[None]), masks=masks, compartments=["Nuclei"], scales=[1], directions=[1, 3])
    f = f.isel(cell=0).to_series()
    assert f["Nuclei_Texture_Contrast_ER_1_01_256"] == pytest.approx(0)
    assert f["Nuclei_Texture_Contrast_ER_1_03_256"] == pytest.approx((153 - 51) ** 2)


def test_texture_equals_direct_graycoprops():
    rng = np.random.default_rng(0)
    nucleus = _nucleus(disk, CENTRE, 12)
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0][nucleus] = 0.9
    img[1] = rng.random((BOX, BOX), dtype=np.float32) * 0.5 + 0.1
    f = _one(img, compartments=["Nuclei"], scales=[3, 5], directions=[0, 1, 2, 3])
    # Reference: the full 256-level matrix of object pixels only (outside pixels at an extra level 0).
    levels = np.round(img[1] * 255).astype(np.uint16) + 1
    levels[~nucleus] = 0
    angles = {0: 0.0, 1: np.pi / 4, 2: np.pi / 2, 3: 3 * np.pi / 4}
    glcm = graycomatrix(levels, [3, 5], list(angles.values()), levels=257, symmetric=True)[1:, 1:]
    names = {"ASM": "AngularSecondMoment", "contrast": "Contrast", "correlation": "Correlation",
             "homogeneity": "InverseDifferenceMoment", "entropy": "Entropy", "variance": "Variance"}
    for prop, name in names.items():
        ref = graycoprops(glcm, prop) / (np.log(2) if prop == "entropy" else 1)
        for i, s in enumerate([3, 5]):
            for j, code in enumerate(angles):
                got = f[f"Nuclei_Texture_{name}_ER_{s}_{code:02d}_256"]
                assert got == pytest.approx(ref[i, j], rel=1e-5), (name, s, code)


def _two_cells():
    """A central cell and a neighbour: nuclei in DNA, separate cell bodies in ER."""
    img = np.zeros((2, BOX, BOX), np.float32)
    central, neighbour = _nucleus(disk, CENTRE, 5), _nucleus(disk, (8, 8), 4)
    body = _nucleus(disk, CENTRE, 14)
    img[0][central | neighbour] = 0.9
    img[1][body | _nucleus(disk, (6, 6), 6)] = 0.5
    return img, central, body


def test_cell_body_and_cytoplasm():
    img, central, body = _two_cells()
    f = _one(img, compartments=["Nuclei", "Cells", "Cytoplasm"], scales=[3])
    assert f["Nuclei_AreaShape_Area"] == central.sum()
    # The drawn body, up to the one-pixel rim that the σ = 1 smoothing moves; not the neighbour's.
    assert f["Cells_AreaShape_Area"] == pytest.approx(body.sum(), rel=0.03)
    assert f["Cytoplasm_AreaShape_Area"] == f["Cells_AreaShape_Area"] - central.sum()
    assert f["Cells_Intensity_MedianIntensity_ER"] == pytest.approx(0.5)


def test_touching_cells_share_the_foreground_by_distance():
    # The central nucleus at column 24 and a neighbour at column 40 in one rectangular body
    # (rows 12-36, columns 8-47): the central cell is the part left of the midline, column 32.
    img = np.zeros((2, BOX, BOX), np.float32)
    img[0][_nucleus(disk, CENTRE, 4) | _nucleus(disk, (24, 40), 4)] = 0.9
    img[1][12:37, 8:48] = 0.5
    f = _one(img, compartments=["Cells"], scales=[3])
    assert f["Cells_AreaShape_Area"] == pytest.approx(25 * (32 - 8 + 0.5), rel=0.05)


def test_distance_cell_body():
    img, central, _ = _two_cells()
    f = _one(img, compartments=["Cells"], cell_body=3, scales=[3])
    grown = ndi.distance_transform_edt(~central) <= 3
    assert f["Cells_AreaShape_Area"] == grown.sum()


def test_no_nucleus_gives_nan():
    img = np.zeros((2, 2, BOX, BOX), np.float32)
    img[1, 0][_nucleus(disk, CENTRE, 8)] = 1.0
    out = classical(_crops(img), scales=[3]).values
    assert np.isnan(out[0]).all()
    assert not np.isnan(out[1, :8]).any()


@pytest.mark.parametrize("chunks", [1, 2, 3])
def test_lazy_and_chunking_do_not_change_results(chunks):
    rng = np.random.default_rng(1)
    img = np.zeros((5, 3, BOX, BOX), np.float32)
    for i in range(5):
        img[i, 0][_nucleus(disk, CENTRE, 6 + i)] = 0.8
        img[i, 1] = rng.random((BOX, BOX)) * 0.3
        img[i, 2][_nucleus(disk, CENTRE, 15)] = 0.4
    crops = _crops(img, channels=("DNA", "ER", "Mito"))
    eager = classical(crops, scales=[3])
    lazy = classical(crops.chunk(cell=chunks), scales=[3])
    assert lazy.chunks[0] == crops.chunk(cell=chunks).chunks[0]
    assert lazy.dtype == np.float32
    np.testing.assert_array_equal(lazy.values, eager.values)
    assert list(lazy["feature"].values) == feature_names(["DNA", "ER", "Mito"], scales=[3])
    np.testing.assert_array_equal(lazy["site"].values, np.arange(1, 6))


def test_imported_masks_replace_segmentation():
    img = np.zeros((2, 2, BOX, BOX), np.float32)
    img[:, 0] = 0.5  # a flat DNA channel cannot be segmented, masks must be used
    masks = np.stack([_nucleus(disk, CENTRE, 7), _nucleus(ellipse, *CENTRE, 4, 9)])
    out = classical(_crops(img), masks=xr.DataArray(masks, dims=("cell", "y", "x")).chunk(cell=1),
                    compartments=["Nuclei"], scales=[3])
    np.testing.assert_array_equal(out.sel(feature="Nuclei_AreaShape_Area").values, masks.sum(axis=(1, 2)))


def test_bad_input_is_reported():
    img = np.zeros((1, 2, BOX, BOX), np.float32)
    with pytest.raises(InputError, match="nucleus_channel 'Hoechst'"):
        classical(_crops(img), nucleus_channel="Hoechst")
    with pytest.raises(InputError) as err:
        classical(_crops(img), compartments=["Cells", "Golgi"], directions=[7])
    assert "Golgi" in str(err.value) and "directions" in str(err.value)
    with pytest.raises(InputError, match="dims"):
        classical(_crops(img).isel(cell=0))


def test_glcm_properties_match_graycoprops_on_edge_cases():
    from cpzarr.features.classic import TEXTURE, _glcm_properties

    rng = np.random.default_rng(5)
    glcm = np.zeros((6, 6, 1, 4), np.uint32)
    counts = rng.integers(0, 4, (6, 6))
    glcm[:, :, 0, 0] = counts + counts.T  # a symmetric matrix
    glcm[2, 2, 0, 1] = 8  # a constant object: one cell
    glcm[0, 5, 0, 2] = glcm[5, 0, 0, 2] = 3  # two levels only
    got = _glcm_properties(glcm)
    for k, prop in enumerate(TEXTURE):
        ref = graycoprops(glcm[:, :, :, :3], prop) / (np.log(2) if prop == "entropy" else 1)
        np.testing.assert_allclose(got[k, :, :3], ref, rtol=1e-10, atol=1e-12, err_msg=prop)
    assert np.isnan(got[:, 0, 3]).all()  # an empty matrix (no object pixel pairs)


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    """A small synthetic screen (known nucleus and cell areas), ingested into a store."""
    import warnings

    import pandas as pd

    from cpzarr.ingest import ingest
    from cpzarr.synthetic import make_screen

    root = tmp_path_factory.mktemp("classic")
    info = make_screen(root / "raw", plates=1, batches=1, sites=1, image_size=192, cells_per_site=14, moas=1,
                       compounds_per_moa=1, dmso_wells=1, seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        screen = ingest(info.load_data, root / "screen.zarr", platemap=info.platemap, scheduler="sync", progress=False)
    return screen, root / "screen.zarr", pd.read_csv(info.truth)


def test_crops_of_a_synthetic_screen_recover_true_areas(synthetic_store):
    import pandas as pd

    from cpzarr.crops import crops

    screen, path, truth = synthetic_store
    view = crops(screen, box=64, edge="skip", cells=truth)
    f = classical(view, scales=[3]).compute()
    key = pd.MultiIndex.from_frame(truth[["well", "x", "y"]])
    rows = key.get_indexer(pd.MultiIndex.from_arrays([f["well"].values, f["x"].values, f["y"].values]))
    assert (rows >= 0).all() and len(rows) >= 10
    ref = truth.iloc[rows]
    nuclei = f.sel(feature="Nuclei_AreaShape_Area").values
    cells = f.sel(feature="Cells_AreaShape_Area").values
    assert np.median(np.abs(nuclei - ref["area"]) / ref["area"]) < 0.04
    assert np.median(np.abs(cells - ref["cell_area"]) / ref["cell_area"]) < 0.12
    assert np.corrcoef(cells, ref["cell_area"])[0, 1] > 0.9
    # One task per site or per well: the same numbers.
    per_well = classical(crops(screen, box=64, edge="skip", cells=truth, chunks="well"), scales=[3])
    np.testing.assert_array_equal(per_well.values, f.values)
    # Into the store through the CNN path's resumable writer.
    from cpzarr.features.cnn import write_features

    write_features(path, "classical", per_well, chunk_cells=5, progress=False, scheduler="sync")
    back = xr.open_zarr(path, group="features/classical", consolidated=False)
    np.testing.assert_array_equal(back["features"].values, f.values)
    assert list(back["feature"].values) == list(f["feature"].values)


def test_examplehuman_agrees_with_cellprofiler(shared_data):
    """Crops around CellProfiler's nuclei of its ExampleHuman image, measured here and there."""
    import pandas as pd
    import tifffile
    from scipy.stats import spearmanr

    folder = shared_data / "cellprofiler_examplehuman"
    site = np.stack([tifffile.imread(folder / f"AS_09125_050116030001_D03f00d{i}.tif") for i in range(3)])
    nuclei = pd.read_csv(folder / "Nuclei.csv")
    half, crops_, rows = BOX // 2, [], []
    for row, (x, y) in enumerate(np.round(nuclei[["Location_Center_X", "Location_Center_Y"]].to_numpy()).astype(int)):
        if half <= y <= site.shape[1] - half and half <= x <= site.shape[2] - half:
            crops_.append(site[:, y - half : y + half, x - half : x + half])
            rows.append(row)
    f = classical(_crops(np.stack(crops_), channels=("DNA", "PH3", "Body")), compartments=["Nuclei"], scales=[3])
    ref = nuclei.iloc[rows]
    ok = ~np.isnan(f.sel(feature="Nuclei_AreaShape_Area").values)
    assert ok.mean() > 0.95

    def compare(ours, theirs):
        a, b = f.sel(feature=ours).values[ok], ref[theirs].to_numpy()[ok]
        return spearmanr(a, b)[0], np.median(np.abs(a - b) / np.abs(b))

    # Same intensity scale and definition: the dim PH3 stain is flat over a nucleus, so the
    # segmentation hardly matters and the means agree to within 2 %.
    rho, rel = compare("Nuclei_Intensity_MeanIntensity_PH3", "Intensity_MeanIntensity_PH3")
    assert rho > 0.95 and rel < 0.02
    rho, rel = compare("Nuclei_Intensity_MeanIntensity_DNA", "Intensity_MeanIntensity_DNA")
    assert rho > 0.85 and rel < 0.2
    rho, rel = compare("Nuclei_AreaShape_Area", "AreaShape_Area")
    assert rho > 0.5 and rel < 0.3  # CellProfiler's pipeline thresholds lower (larger nuclei)
