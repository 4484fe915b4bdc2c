"""The shard format read and written directly (cpzarr._shards) against zarr-python's own."""

import pickle

import numpy as np
import pytest
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, TransposeCodec, ZstdCodec

from cpzarr._shards import ShardWriter, SiteReader, blosc_blocks, blosc_stored, layout

# plate, well, site, channel, y, x: a shard per well of 3 sites, a chunk per site
SHAPE = (2, 2, 3, 2, 8, 6)
SITE, WELL = (1, 1, 1) + SHAPE[3:], (1, 1, 3) + SHAPE[3:]
BIT = BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle", blocksize=256)
BYTE = BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")

# (dtype, codecs after bytes, bytes' byte order, index location, index codecs, fill value, key encoding)
LAYOUTS = {
    "uint8-bitshuffle": ("uint8", [BIT], "little", "end", None, 0, None),
    "uint16-shuffle": ("uint16", [BYTE], "little", "end", None, 0, None),
    "uint16-zstd": ("uint16", [ZstdCodec(level=1)], "little", "end", None, 0, None),
    "uint16-raw": ("uint16", [], "little", "end", None, 0, None),
    "index-first": ("uint8", [BIT], "little", "start", None, 0, None),
    "index-without-crc": ("uint16", [BYTE], "little", "end", [BytesCodec()], 0, None),
    "big-endian": ("uint16", [BYTE], "big", "end", None, 0, None),
    "float-nan-fill": ("float32", [ZstdCodec(level=1)], "little", "end", None, np.nan, None),
    "fill-7": ("int16", [BYTE], "little", "start", None, 7, None),
    "v2-keys": ("uint16", [BYTE], "little", "end", None, 0, {"name": "v2", "separator": "."}),
}


def _create(path, case):
    dtype, codecs, endian, location, index_codecs, fill, keys = LAYOUTS[case]
    sharding = ShardingCodec(
        chunk_shape=SITE, codecs=[BytesCodec(endian=endian), *codecs], index_location=location,
        index_codecs=index_codecs or [BytesCodec(), Crc32cCodec()],
    )
    return zarr.create_array(path, shape=SHAPE, dtype=dtype, chunks=WELL, serializer=sharding, compressors=None,
                             fill_value=fill, chunk_key_encoding=keys)


def _pixels(case):
    dtype, fill = np.dtype(LAYOUTS[case][0]), LAYOUTS[case][5]
    rng = np.random.default_rng(len(case))
    pixels = (rng.integers(0, 40, SHAPE) * np.arange(1, 7)).astype(dtype)  # a smooth-ish x
    pixels[0, 1] = fill  # a well all fill value: no shard file
    pixels[1, 0, 1] = fill  # a site all fill value: marked empty in its shard
    pixels[1, 1, 2, 0, 3, 4] = fill  # a site only partly fill value is stored
    return pixels


def _files(path):
    return {f.relative_to(path): f.read_bytes() for f in path.rglob("*") if f.is_file() and f.name != "zarr.json"}


@pytest.mark.parametrize("case", LAYOUTS)
def test_writes_equal_zarrs_bytes_and_reads_equal_numpy(case, tmp_path):
    pixels = _pixels(case)
    _create(tmp_path / "by_zarr", case)[...] = pixels
    _create(tmp_path / "direct", case)
    writer = ShardWriter.open(tmp_path / "direct")
    assert writer is not None and writer.block_shape == WELL
    for p in range(SHAPE[0]):
        for w in range(SHAPE[1]):
            writer.write((p, w, 0, 0, 0, 0), np.ones(WELL, pixels.dtype))  # replaced just after
            writer.write((p, w, 0, 0, 0, 0), pixels[p : p + 1, w : w + 1])
    by_zarr, direct = _files(tmp_path / "by_zarr"), _files(tmp_path / "direct")
    assert direct.keys() == by_zarr.keys() and len(direct) == 3  # the well of fill value left out
    for key in direct:
        assert direct[key] == by_zarr[key], key
    # read back site by site, the empty site and the shard never written included
    reader = pickle.loads(pickle.dumps(SiteReader.open(tmp_path / "by_zarr")))
    for p, w, s in np.ndindex(SHAPE[:3]):
        np.testing.assert_array_equal(reader.site(p, w, s), pixels[p, w, s])
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "direct")[...], pixels)


def test_unsharded_chunks_equal_zarrs_bytes(tmp_path):
    # the store's present array: a bool chunk per well
    mask = np.zeros((2, 3, 4), bool)
    mask[0, 1, 2] = mask[1, 2] = True
    codec = BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")
    for name in ("by_zarr", "direct"):
        zarr.create_array(tmp_path / name, shape=mask.shape, chunks=(1, 1, 4), dtype=bool, compressors=codec,
                          fill_value=False)
    zarr.open_array(tmp_path / "by_zarr", mode="r+")[...] = mask
    writer = ShardWriter.open(tmp_path / "direct")
    for p, w in np.ndindex(mask.shape[:2]):
        writer.write((p, w, 0), mask[p : p + 1, w : w + 1])
    by_zarr, direct = _files(tmp_path / "by_zarr"), _files(tmp_path / "direct")
    assert direct == by_zarr and len(direct) == 2  # wells all False are not stored
    assert SiteReader.open(tmp_path / "direct") is None  # no shards to read sites from


def test_other_layouts_are_left_to_zarr(tmp_path):
    def made(name, **kwargs):
        kwargs = {"shape": (2, 4, 4), "dtype": "uint16", "fill_value": 0, **kwargs}
        zarr.create_array(tmp_path / name, **kwargs)
        return tmp_path / name

    others = [
        made("gzip", chunks=(1, 4, 4), compressors=GzipCodec()),
        made("transposed", chunks=(1, 4, 4), filters=TransposeCodec(order=(0, 2, 1)), compressors=None),
        # inner chunks along two dimensions: zarr stores them in Morton order
        made("morton", chunks=(1, 2, 2), shards=(1, 4, 4), compressors=None),
        made("version2", chunks=(1, 4, 4), zarr_format=2),
        tmp_path / "missing",
    ]
    for path in others:
        assert layout(path) is None and ShardWriter.open(path) is None and SiteReader.open(path) is None, path


def test_site_reader_needs_a_chunk_per_site(tmp_path):
    _create(tmp_path / "sites", "uint16-raw")
    assert SiteReader.open(tmp_path / "sites") is not None
    # a shard per site, a chunk per channel
    sharding = ShardingCodec(chunk_shape=(1, 1, 1, 1) + SHAPE[4:], codecs=[BytesCodec()])
    zarr.create_array(tmp_path / "channels", shape=SHAPE, dtype="uint16", chunks=SITE, serializer=sharding,
                      compressors=None)
    assert layout(tmp_path / "channels") is not None and SiteReader.open(tmp_path / "channels") is None


@pytest.mark.parametrize("typesize", [1, 2, 4])
@pytest.mark.parametrize("shuffle", ["noshuffle", "shuffle", "bitshuffle"])
@pytest.mark.parametrize("cname", ["zstd", "lz4"])
def test_blosc_blocks_equal_whole_decode(cname, shuffle, typesize):
    rng = np.random.default_rng(typesize)
    # smooth, compressible pixels, and a length that leaves a short last block of odd size
    pixels = (np.cumsum(rng.integers(-2, 3, 300_001)) % 4000).astype(f"u{typesize}")
    code = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}[shuffle]
    raw = Blosc(cname, 1, code, blocksize=8192).encode(pixels)
    whole = np.frombuffer(Blosc().decode(raw), np.uint8)
    for starts, stops in [
        (np.array([0, 40_000, 123_457]), np.array([100, 49_000, 123_458])),
        (np.array([whole.size - 5000, 60_000]), np.array([whole.size, 60_000])),  # the short last block
    ]:
        part = blosc_blocks(raw, (starts, stops), Blosc())
        assert part is not None and part.size == whole.size
        for a, b in zip(starts, stops):
            np.testing.assert_array_equal(part[a:b], whole[a:b])
    # most of the blocks: a whole decode is cheaper, and is left to the caller
    assert blosc_blocks(raw, (np.array([0]), np.array([whole.size])), Blosc()) is None


def test_blosc_stored_bytes_are_read_in_place():
    noise = np.random.default_rng(0).random(50_000).astype(np.float32)  # nothing for LZ4 to shrink
    raw = Blosc("lz4", 5, Blosc.NOSHUFFLE).encode(noise)
    assert raw[2] & 0x2  # Blosc marked it stored as it was
    np.testing.assert_array_equal(blosc_stored(raw).view(np.float32), noise)
    np.testing.assert_array_equal(blosc_blocks(raw, (np.array([0]), np.array([8])), Blosc()).view(np.float32), noise)
    assert blosc_stored(raw[:-1]) is None  # cut short: left to Blosc, which refuses it
    assert blosc_stored(Blosc("lz4", 5, Blosc.NOSHUFFLE).encode(np.zeros(50_000, np.float32))) is None
    assert blosc_stored(b"\x02\x01") is None
