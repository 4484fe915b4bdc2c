"""Crops against plain numpy slices of the source images."""

import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from cpzarr.cells import cells_from_table
from cpzarr.crops import Sampler, crops, sample
from cpzarr.errors import InputError, StoreError

PLATES, WELLS, SITES, CHANNELS, HEIGHT, WIDTH = ["P1", "P2"], ["A01", "A02", "B03"], [1, 2], ["DNA", "ER", "RNA"], 40, 52
BOX = 10


def _screen(dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    shape = (len(PLATES), len(WELLS), len(SITES), len(CHANNELS), HEIGHT, WIDTH)
    pixels = rng.integers(1, 250, shape).astype(dtype)
    images = da.from_array(pixels, chunks=(1, 1, 1, len(CHANNELS), HEIGHT, WIDTH))
    compound = np.array([["DMSO", "drugA", "drugB"]] * len(PLATES), dtype=object)
    screen = xr.Dataset(
        {
            "images": (("plate", "well", "site", "channel", "y", "x"), images),
            "present": (("plate", "well", "site"), np.ones(shape[:3], bool)),
            "compound": (("plate", "well"), compound),
        },
        coords={
            "plate": np.array(PLATES, object), "well": np.array(WELLS, object), "site": SITES,
            "channel": np.array(CHANNELS, object),
        },
    )
    return screen, pixels


# middle, edges (top, bottom, left, right), corners, and exactly-fitting boxes
POINTS = [
    (26.0, 20.0), (13.4, 17.6), (0.0, 20.0), (51.0, 20.0), (26.0, 0.0), (26.0, 39.0),
    (0.0, 0.0), (51.0, 39.0), (0.0, 39.0), (51.0, 0.0), (5.0, 5.0), (46.49, 34.2), (4.5, 4.5),
]


def _cells(screen):
    rows = []
    for p in PLATES:
        for w in WELLS:
            for s in SITES:
                for x, y in POINTS:
                    rows.append((p, w, s, x, y))
    table = pd.DataFrame(rows, columns=["plate", "well", "site", "x", "y"])
    return cells_from_table(table, screen["images"])


def _reference(pixels, plate, well, site, x, y, box, channels=slice(None)):
    """Crop by zero-padding the whole image by the box and slicing: independent of the code."""
    image = pixels[PLATES.index(plate), WELLS.index(well), SITES.index(site)][channels]
    padded = np.pad(image, ((0, 0), (box, box), (box, box)))
    cy, cx = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
    r, c = cy - box // 2 + box, cx - box // 2 + box
    return padded[:, r : r + box, c : c + box]


def _fits(x, y, box):
    cy, cx = int(np.floor(y + 0.5)), int(np.floor(x + 0.5))
    r, c = cy - box // 2, cx - box // 2
    return r >= 0 and c >= 0 and r + box <= HEIGHT and c + box <= WIDTH


@pytest.mark.parametrize("edge", ["skip", "pad"])
@pytest.mark.parametrize("box", [BOX, 9])
def test_crops_equal_numpy_slices(edge, box):
    screen, pixels = _screen()
    cells = _cells(screen)
    view = crops(screen, box=box, edge=edge, cells=cells)
    values = view.values
    expected_cells = [
        i for i in range(cells.sizes["cell"])
        if edge == "pad" or _fits(float(cells.x[i]), float(cells.y[i]), box)
    ]
    assert view.cell.values.tolist() == expected_cells
    assert values.dtype == np.uint16 and values.shape == (len(expected_cells), 3, box, box)
    for k, i in enumerate(expected_cells):
        ref = _reference(pixels, str(cells.plate[i].values), str(cells.well[i].values),
                         int(cells.site[i]), float(cells.x[i]), float(cells.y[i]), box)
        np.testing.assert_array_equal(values[k], ref)
    if edge == "skip":
        # the middle points and the exactly fitting ones are kept, edge and corner points are not
        kept_points = set(zip(view.x.values.tolist(), view.y.values.tolist()))
        assert (26.0, 20.0) in kept_points and (0.0, 0.0) not in kept_points


def test_box_convention_hand_worked():
    screen, pixels = _screen()
    table = pd.DataFrame({"plate": ["P1"], "well": ["A01"], "site": [1], "x": [10.5], "y": [7.49]})
    view = crops(screen, box=4, cells=table)
    # x 10.5 rounds up to column 10.5 + 0.5 -> 11, y 7.49 -> row 7; box rows 5..8, columns 9..12
    np.testing.assert_array_equal(view.values[0], pixels[0, 0, 0, :, 5:9, 9:13])


def test_coordinates_survive_round_trip():
    screen, _ = _screen()
    cells = _cells(screen)
    view = crops(screen, box=BOX, edge="pad", cells=cells)
    for name in ("plate", "well", "site", "x", "y"):
        np.testing.assert_array_equal(view[name].values, cells[name].values)
    assert view.channel.values.tolist() == CHANNELS


@pytest.mark.parametrize("chunks", ["site", "well"])
def test_chunkings_give_same_crops(chunks):
    screen, _ = _screen()
    cells = _cells(screen)
    reference = crops(screen, box=BOX, edge="pad", cells=cells).values
    view = crops(screen, box=BOX, edge="pad", cells=cells, chunks=chunks)
    per = len(POINTS) * (len(SITES) if chunks == "well" else 1)
    assert set(view.data.chunks[0]) == {per}
    np.testing.assert_array_equal(view.values, reference)
    # a store chunked differently (several sites per chunk) is read the same way
    rechunked = screen.copy()
    rechunked["images"] = screen["images"].chunk({"site": 2, "well": 3, "y": 20})
    np.testing.assert_array_equal(
        crops(rechunked, box=BOX, edge="pad", cells=cells, chunks=chunks).values, reference
    )


def test_subset_reads_only_its_sites():
    screen, pixels = _screen()
    cells = _cells(screen)
    reads = []

    def counted(block):
        reads.append(1)
        return block

    counted_blocks = screen["images"].data.map_blocks(counted, meta=np.empty((0,) * 6, np.uint16))
    screen["images"] = screen["images"].copy(data=counted_blocks)
    view = crops(screen, box=BOX, cells=cells)
    one_site = view.isel(cell=[0, 1, 2])
    with dask.config.set(scheduler="sync"):
        one_site.values
    assert len(reads) == 1
    reads.clear()
    with dask.config.set(scheduler="sync"):
        view.values
    assert len(reads) == len(PLATES) * len(WELLS) * len(SITES)


def test_channels_and_scaling():
    screen, pixels = _screen()
    cells = _cells(screen)
    raw = crops(screen, box=BOX, channels=["RNA", "DNA"], cells=cells).values
    full = crops(screen, box=BOX, cells=cells).values
    np.testing.assert_array_equal(raw, full[:, [2, 0]])
    scaled = crops(screen, box=BOX, channels=["RNA", "DNA"], scale="minmax", cells=cells).values
    assert scaled.dtype == np.float32
    lo = raw.min(axis=(2, 3), keepdims=True).astype(np.float64)
    hi = raw.max(axis=(2, 3), keepdims=True).astype(np.float64)
    np.testing.assert_allclose(scaled, (raw - lo) / (hi - lo), rtol=1e-6)
    dp = crops(screen, box=BOX, scale="deepprofiler", cells=cells).values
    np.testing.assert_allclose(dp, (full - full.min(axis=(2, 3), keepdims=True)) /
                               full.max(axis=(2, 3), keepdims=True).astype(np.float64), rtol=1e-6)


def test_constant_crop_scales_to_zeros():
    screen, _ = _screen()
    screen["images"] = xr.full_like(screen["images"], 7)
    table = pd.DataFrame({"plate": ["P1"], "well": ["A01"], "site": [1], "x": [20.0], "y": [20.0]})
    out = crops(screen, box=BOX, scale="minmax", cells=table).values
    assert out.dtype == np.float32 and not out.any()


def test_bad_options_are_reported_together():
    screen, _ = _screen()
    cells = _cells(screen)
    with pytest.raises(InputError) as err:
        crops(screen, box=0, edge="mirror", scale="zscore", cells=cells)
    assert len(err.value.problems) == 3
    with pytest.raises(InputError, match="unknown channels"):
        crops(screen, channels=["DAPI"], cells=cells)
    with pytest.raises(StoreError, match="no /cells"):
        crops(screen)
    table = pd.DataFrame({"plate": ["P9"], "well": ["A01"], "site": [1], "x": [5.0], "y": [5.0]})
    with pytest.raises(InputError, match="plate P9, well A01, site 1"):
        crops(screen, cells=table)


def test_cells_in_absent_sites_raise():
    screen, _ = _screen()
    screen["present"][0, 0, 0] = False
    with pytest.raises(StoreError, match="present is False.*P1/A01/site 1"):
        crops(screen, box=BOX, cells=_cells(screen))


def test_sample_reads_each_site_once_and_matches_crops():
    screen, pixels = _screen()
    cells = _cells(screen)
    full = crops(screen, box=BOX, edge="pad", cells=cells)
    batch, labels = sample(screen, 40, box=BOX, seed=3, edge="pad", cells=cells)
    assert batch.shape == (40, 3, BOX, BOX) and len(labels) == 40
    np.testing.assert_array_equal(batch, full.values[labels["cell"].to_numpy()])
    # labels are the cells' own coordinates and their well's metadata
    np.testing.assert_array_equal(labels["x"], cells.x.values[labels["cell"]])
    expected = {"A01": "DMSO", "A02": "drugA", "B03": "drugB"}
    assert (labels["compound"] == labels["well"].map(expected)).all()
    again, labels_again = sample(screen, 40, box=BOX, seed=3, edge="pad", cells=cells)
    np.testing.assert_array_equal(batch, again)
    assert labels.equals(labels_again)


def test_sample_skip_never_draws_edge_cells_and_groups_sites():
    screen, _ = _screen()
    cells = _cells(screen)
    _, labels = sample(screen, 200, box=BOX, seed=0, edge="skip", cells=cells)
    assert all(_fits(x, y, BOX) for x, y in zip(labels["x"], labels["y"]))
    _, grouped = sample(screen, 24, box=BOX, seed=0, edge="skip", cells=cells, cells_per_site=4)
    assert len(grouped) == 24
    assert grouped.groupby(["plate", "well", "site"]).size().min() >= 4


def test_numpy_string_dtype_labels():
    # xarray opens Zarr v3 strings as numpy StringDType unless told otherwise
    screen, pixels = _screen()
    text = np.dtypes.StringDType()
    screen = screen.assign_coords(plate=np.array(PLATES, dtype=text), well=np.array(WELLS, dtype=text))
    screen["compound"] = screen["compound"].astype(text)
    table = pd.DataFrame({"plate": ["P2"], "well": ["B03"], "site": [2], "x": [20.0], "y": [20.0]})
    view = crops(screen, box=BOX, cells=table)
    np.testing.assert_array_equal(view.values[0], _reference(pixels, "P2", "B03", 2, 20.0, 20.0, BOX))
    _, labels = sample(screen, 3, box=BOX, seed=0, cells=table)
    assert labels["compound"].tolist() == ["drugB"] * 3


def test_real_lincs_crops_equal_png_slices(shared_data, tmp_path):
    import imageio.v3 as iio

    from cpzarr.cells import import_locations
    from cpzarr.ingest import ingest
    from cpzarr.store import open_screen

    root = shared_data / "lincs_images_SQ00015198_SQ00015230"
    index = pd.read_csv(root / "index.csv")
    index = index[(index.Metadata_Well == "A13") & (index.Metadata_Site == 2)].copy()
    for column in ("DNA", "ER", "RNA", "AGP", "Mito"):
        index[column] = [str(root / p) for p in index[column]]
    index.to_csv(tmp_path / "index.csv", index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ingest's notes on which LINCS column became compound, dose, ...
        ingest(tmp_path / "index.csv", tmp_path / "screen.zarr", progress=False)
    screen = open_screen(tmp_path / "screen.zarr")
    with pytest.warns(UserWarning, match="in sites the store does not have"):
        cells = import_locations(screen, root / "locations", on_invalid="drop")
    assert cells.sizes["cell"] == sum(len(pd.read_csv(root / p)) for p in index.Nuclei_Locations)
    for edge in ("skip", "pad"):
        view = crops(screen, box=128, edge=edge, cells=cells)
        pick = np.unique(np.r_[0, 1, np.argmin(view.x.values), np.argmax(view.y.values), view.sizes["cell"] - 1])
        values = view.isel(cell=pick).values
        for k, i in enumerate(pick):
            row = index[index.Metadata_Plate == str(view.plate.values[i])].iloc[0]
            pixels = np.stack([iio.imread(row[c]) for c in screen["images"].channel.values])
            padded = np.pad(pixels, ((0, 0), (128, 128), (128, 128)))
            cy, cx = (int(np.floor(v + 0.5)) + 64 for v in (view.y.values[i], view.x.values[i]))
            np.testing.assert_array_equal(values[k], padded[:, cy : cy + 128, cx : cx + 128])


def _write_store(path, pixels, compressor, *, index_location="end"):
    """A store in the contract's layout (a chunk per site, a shard per well) with the POINTS cells."""
    import zarr

    from cpzarr import __version__
    from cpzarr.cells import write_cells

    screen, _ = _screen()
    root = screen.drop_vars("images")
    root.attrs = {"cpzarr_version": __version__, "complete": True}
    root.to_zarr(path, mode="w", zarr_format=3, consolidated=False)
    group = zarr.open_group(path, mode="r+", zarr_format=3)
    shape = pixels.shape
    site, well = (1, 1, 1) + shape[3:], (1, 1, shape[2]) + shape[3:]
    sharding = zarr.codecs.ShardingCodec(
        chunk_shape=site, codecs=[zarr.codecs.BytesCodec()] + ([compressor] if compressor else []),
        index_location=index_location,
    )
    images = group.create_array(
        "images", shape=shape, dtype=pixels.dtype, chunks=well, serializer=sharding, compressors=None,
        fill_value=0, dimension_names=["plate", "well", "site", "channel", "y", "x"],
    )
    images[...] = pixels
    opened = xr.open_zarr(path, consolidated=False, zarr_format=3)
    write_cells(path, _cells(opened))


def _store_cases():
    import zarr

    bit = zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")
    byte = zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
    return [(np.uint8, bit, "end"), (np.uint16, byte, "end"), (np.uint16, zarr.codecs.ZstdCodec(level=1), "end"),
            (np.uint16, None, "end"), (np.uint8, bit, "start")]


@pytest.fixture(params=range(5), ids=["uint8-blosc", "uint16-blosc", "uint16-zstd", "uint16-raw", "index-first"])
def store(request, tmp_path):
    from cpzarr.store import open_screen

    dtype, compressor, index_location = _store_cases()[request.param]
    _, pixels = _screen(dtype, seed=request.param)
    pixels[1, 2, 0] = 0  # a site of zeros is never written: the shard marks its chunk empty
    _write_store(tmp_path / "screen.zarr", pixels, compressor, index_location=index_location)
    return open_screen(tmp_path / "screen.zarr"), pixels


def _check_against_pixels(values, labels, pixels, box=BOX, channels=slice(None)):
    for k, row in enumerate(labels.itertuples()):
        ref = _reference(pixels, row.plate, row.well, row.site, row.x, row.y, box, channels)
        np.testing.assert_array_equal(values[k], ref)


def test_store_crops_are_read_from_shard_files_and_equal_numpy_slices(store):
    from cpzarr.cells import screen_parts
    from cpzarr.crops import _StoreSites

    screen, pixels = store
    images, _, root = screen_parts(screen)
    assert _StoreSites(images, root).shards is not None  # the direct path, not a fallback
    # the Zarr array itself agrees with the pixels written, empty chunk included
    np.testing.assert_array_equal(screen["images"].values, pixels)
    for edge in ("skip", "pad"):
        view = crops(screen, box=BOX, edge=edge, channels=["RNA", "DNA"])
        labels = view.coords.to_dataset().drop_vars(["channel", "cell"]).to_dataframe()
        _check_against_pixels(view.values, labels, pixels, channels=[2, 0])
        assert len(labels) == (len(POINTS) if edge == "pad" else sum(_fits(x, y, BOX) for x, y in POINTS)) * 12
    # the graph ships to other processes (a distributed cluster), shard reader included
    shipped = pickle.loads(pickle.dumps(view.data))
    np.testing.assert_array_equal(shipped.compute(scheduler="sync"), view.values)


def test_store_sample_equals_in_memory_sample(store):
    screen, pixels = store
    batch, labels = sample(screen, 30, box=BOX, seed=5, edge="pad", cells_per_site=3)
    _check_against_pixels(batch, labels, pixels)
    # the same draw through dask blocks of an in-memory copy (the fallback reader)
    memory = screen.to_dataset(inherit=False).load()
    memory_batch, memory_labels = sample(memory, 30, box=BOX, seed=5, edge="pad", cells_per_site=3,
                                         cells=screen["cells"].to_dataset(inherit=False))
    np.testing.assert_array_equal(batch, memory_batch)
    assert labels["cell"].tolist() == memory_labels["cell"].tolist()


def test_sampler_batches_equal_numpy_slices_and_are_reproducible(store):
    screen, pixels = store
    with Sampler(screen, 16, box=BOX, cells_per_site=3, pool_batches=2, seed=11, edge="pad") as first, \
            Sampler(screen, 16, box=BOX, cells_per_site=3, pool_batches=2, seed=11, edge="pad", workers=1) as again:
        for _ in range(4):
            batch, labels = next(first)
            assert batch.shape == (16, 3, BOX, BOX) and batch.dtype == pixels.dtype
            _check_against_pixels(batch, labels, pixels)
            expected = {"A01": "DMSO", "A02": "drugA", "B03": "drugB"}
            assert (labels["compound"] == labels["well"].map(expected)).all()
            # one thread or two, the stream is the same
            batch_again, labels_again = next(again)
            np.testing.assert_array_equal(batch, batch_again)
            assert labels.equals(labels_again)
    with Sampler(screen, 16, box=BOX, cells_per_site=3, seed=12, edge="pad") as other:
        assert next(other)[1]["cell"].tolist() != labels["cell"].tolist()


def test_sampler_scales_and_selects_channels():
    screen, pixels = _screen()
    cells = _cells(screen)
    with Sampler(screen, 8, box=BOX, channels=["ER"], scale="minmax", cells=cells, seed=0) as batches:
        batch, labels = next(batches)
    assert batch.dtype == np.float32 and batch.shape == (8, 1, BOX, BOX)
    for k, row in enumerate(labels.itertuples()):
        raw = _reference(pixels, row.plate, row.well, row.site, row.x, row.y, BOX, [1]).astype(np.float64)
        np.testing.assert_allclose(batch[k], (raw - raw.min()) / (raw.max() - raw.min()), rtol=1e-6)


def test_sampler_spreads_cells_over_plates_and_sites():
    screen, _ = _screen()
    cells = _cells(screen)
    with Sampler(screen, 24, box=BOX, cells_per_site=4, pool_batches=3, cells=cells, seed=1) as batches:
        labels = pd.concat([next(batches)[1] for _ in range(20)])
    sites = labels.groupby(["plate", "well", "site"]).size()
    assert set(labels["plate"]) == set(PLATES) and len(sites) == len(PLATES) * len(WELLS) * len(SITES)
    # consecutive batches mix the pool: a batch holds cells of more sites than it reads (24 / 4)
    with Sampler(screen, 24, box=BOX, cells_per_site=4, pool_batches=3, cells=cells, seed=1) as batches:
        next(batches)
        assert next(batches)[1].groupby(["plate", "well", "site"]).ngroups > 6


def test_site_draws_are_uniform_over_cells():
    from cpzarr.crops import _Draws

    screen, _ = _screen()
    # sites of 1, 2, 6 and 13 eligible cells: drawn by cell count alone, 4 cells a site would
    # under-draw the small sites' cells; the weights n / min(k, n) make every cell equally likely
    counts = {("P1", "A01", 1): 1, ("P1", "A02", 2): 2, ("P2", "A01", 1): 6, ("P2", "B03", 2): 13}
    rows = [(p, w, s, 10.0 + i, 20.0) for (p, w, s), n in counts.items() for i in range(n)]
    table = pd.DataFrame(rows, columns=["plate", "well", "site", "x", "y"])
    draws = _Draws(screen, table, BOX, "skip", None)
    rng = np.random.default_rng(0)
    _, picked = draws.draw_sites(rng, 40_000, 4)
    hits = np.bincount(np.concatenate(picked), minlength=len(table))
    expected = hits.sum() / len(table)
    # binomial spread of each cell's count is about sqrt(expected) ~ 100; allow 5 of them
    assert np.abs(hits - expected).max() < 5 * np.sqrt(expected)
    assert all(len(set(p)) == len(p) for p in picked[:100])  # cells of one draw are distinct


def test_sampler_bad_options():
    screen, _ = _screen()
    cells = _cells(screen)
    with pytest.raises(InputError, match="batch_size"):
        Sampler(screen, 0, cells=cells)
    with pytest.raises(InputError, match="workers"):
        Sampler(screen, 4, cells=cells, workers=0)
    with pytest.raises(InputError, match="cells_per_site"):
        sample(screen, 4, cells=cells, cells_per_site=0)
    screen["present"][0, 0, 0] = False
    with pytest.raises(StoreError, match="present is False"):
        Sampler(screen, 4, box=BOX, cells=cells)


def test_sampler_on_large_sites_reads_blocks_and_equals_numpy_slices(tmp_path):
    import zarr

    from cpzarr.cells import screen_parts
    from cpzarr.crops import _StoreSites
    from cpzarr.store import open_screen

    global HEIGHT, WIDTH
    saved = HEIGHT, WIDTH
    HEIGHT, WIDTH = 400, 520  # 3 channels of 400 rows: many Blosc blocks per site
    try:
        _, pixels = _screen(np.uint16, seed=3)
        pixels //= 8  # compressible, as microscope pixels are
        blosc = zarr.codecs.BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")
        _write_store(tmp_path / "screen.zarr", pixels, blosc)
        screen = open_screen(tmp_path / "screen.zarr")
        images, _, root = screen_parts(screen)
        site = _StoreSites(images, root)
        decoded = []

        class Counted:
            def __init__(self, codec):
                self.codec = codec

            def decode(self, *args, **kwargs):
                out = self.codec.decode(*args, **kwargs)
                decoded.append(np.asarray(out).nbytes)
                return out

        site.shards.decoder = Counted(site.shards.decoder)
        read = site(1, 2, 0, need=(np.array([100]), 10, np.array([1])))
        np.testing.assert_array_equal(read[1, 100:110], pixels[1, 2, 0, 1, 100:110])
        np.testing.assert_array_equal(site(1, 2, 0), pixels[1, 2, 0])
        # the band alone decoded a small share of the site; the whole site, all of it
        assert decoded[0] < pixels[1, 2, 0].nbytes / 4 and decoded[1] == pixels[1, 2, 0].nbytes
        with Sampler(screen, 12, box=BOX, cells_per_site=2, channels=["RNA", "ER"], seed=4, edge="pad") as batches:
            batch, labels = next(batches)
        _check_against_pixels(batch, labels, pixels, channels=[2, 1])
    finally:
        HEIGHT, WIDTH = saved
