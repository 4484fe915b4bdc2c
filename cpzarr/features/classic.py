"""Classical (CellProfiler-like) single-cell measurements on crops.

Each cell's crop is segmented into a nucleus and a cell body, and scikit-image measures intensity,
shape and Haralick texture on them per channel. Feature names follow CellProfiler's
``<Compartment>_<Module>_<Measurement>[_<Channel>[_<scale>_<direction>_<levels>]]`` scheme so that
Pycytominer-style downstream code (blocklists, feature groups) reads them unchanged.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from cpzarr.errors import InputError

#: Shape measurements (scikit-image ``regionprops`` property → CellProfiler name).
SHAPE = {
    "area": "Area",
    "perimeter": "Perimeter",
    "eccentricity": "Eccentricity",
    "solidity": "Solidity",
    "extent": "Extent",
    "axis_major_length": "MajorAxisLength",
    "axis_minor_length": "MinorAxisLength",
}
#: Intensity measurements, in output order (FormFactor is derived from area and perimeter).
INTENSITY = (
    "IntegratedIntensity",
    "MeanIntensity",
    "StdIntensity",
    "MinIntensity",
    "MaxIntensity",
    "LowerQuartileIntensity",
    "MedianIntensity",
    "UpperQuartileIntensity",
    "MassDisplacement",
)
#: Haralick measurements (``graycoprops`` property → CellProfiler name); each matches
#: CellProfiler's (mahotas's) definition on a symmetric co-occurrence matrix, entropy after the
#: change from natural log to log2.
TEXTURE = {
    "ASM": "AngularSecondMoment",
    "contrast": "Contrast",
    "correlation": "Correlation",
    "homogeneity": "InverseDifferenceMoment",
    "entropy": "Entropy",
    "variance": "Variance",
}
#: CellProfiler's direction codes (mahotas's (dy, dx) offsets (0, 1), (1, 1), (1, 0), (1, -1):
#: horizontal, down-right diagonal, vertical, down-left diagonal) → the ``graycomatrix`` angles
#: that pair the same pixels.
DIRECTIONS = {0: 0.0, 1: np.pi / 4, 2: np.pi / 2, 3: 3 * np.pi / 4}
COMPARTMENTS = ("Nuclei", "Cells", "Cytoplasm")
#: Automatic thresholds for the nucleus (names of ``skimage.filters.threshold_<name>``).
THRESHOLDS = ("otsu", "li", "triangle")


def feature_names(channels, *, compartments=("Nuclei", "Cells"), scales=(3, 5), directions=(0,), levels=256):
    """Names of the features :func:`classical` returns, in its order.

    Parameters
    ----------
    channels : sequence of str
        Channel names in crop order.
    compartments, scales, directions, levels
        As in :func:`classical`.

    Returns
    -------
    list of str
        CellProfiler-style names, compartment by compartment: shape, then intensity of every
        channel, then texture of every channel, scale and direction.

    Examples
    --------
    >>> feature_names(["DNA"], compartments=["Nuclei"], scales=[3])[:2]
    ['Nuclei_AreaShape_Area', 'Nuclei_AreaShape_Perimeter']
    >>> feature_names(["DNA"], compartments=["Nuclei"], scales=[3])[-1]
    'Nuclei_Texture_Variance_DNA_3_00_256'
    """
    names = []
    for comp in compartments:
        names += [f"{comp}_AreaShape_{name}" for name in SHAPE.values()]
        names.append(f"{comp}_AreaShape_FormFactor")
        names += [f"{comp}_Intensity_{m}_{ch}" for ch in channels for m in INTENSITY]
        names += [
            f"{comp}_Texture_{t}_{ch}_{s}_{d:02d}_{levels}"
            for ch in channels
            for s in scales
            for d in directions
            for t in TEXTURE.values()
        ]
    return names


def classical(
    crops,
    *,
    masks=None,
    nucleus_channel="DNA",
    nucleus_threshold="otsu",
    compartments=("Nuclei", "Cells"),
    cell_body="distance-b",
    scales=(3, 5),
    directions=(0,),
    levels=256,
):
    """Measure intensity, shape and Haralick texture of every cell in a crop view.

    For each crop the **nucleus** is found in the ``nucleus_channel``: a threshold over the crop
    (Otsu's by default), holes filled, connected components labelled, and the component under
    the crop centre kept (the nearest component within a quarter box when the centre pixel is
    background, e.g. a location a little off the segmented shape). On synthetic screens this
    recovers the true nucleus areas within 1–3 % (median over ~200 nuclei); smoothing first, Li's
    threshold or splitting touching nuclei by a distance-transform watershed each made it worse
    (elongated nuclei were split). On CellProfiler's ExampleHuman image the areas come out about
    22 % below CellProfiler's own, whose pipeline thresholds lower; ``nucleus_threshold="li"``
    comes within 13 % there. ``masks`` replaces the segmentation by imported nucleus masks.
    The **cell body** is CellProfiler's secondary-object step done inside the box. With
    ``cell_body="distance-b"`` (IdentifySecondaryObjects "Distance - B") the other channels,
    each min–max scaled, summed and smoothed (Gaussian, σ = 1 px), are thresholded by Otsu, and
    each foreground pixel joins the nucleus nearest to it along the foreground (a watershed from
    *all* nuclei of the crop over flat ground), so neighbouring cells keep their share of the
    cytoplasm instead of being absorbed. On 211 synthetic cells with known bodies this came
    within 10 % of the true area (median; correlation 0.93), where a watershed on intensity did
    worse (bright neighbours flooded dim cytoplasm first) and growing nuclei by 3–6 px fell 40–60 %
    short. An integer ``N`` instead grows the
    nuclei by ``N`` pixels without overlap ("Distance - N"). The cytoplasm is the cell body less
    its nucleus.

    Intensities are on CellProfiler's scale: integer images divided by their dtype's maximum,
    float images as given (on ExampleHuman the nuclear PH3 means agree with CellProfiler's to
    0.3 %). Texture follows CellProfiler's MeasureTexture: the crop rounded to ``levels`` grey
    levels, scikit-image's symmetric ``graycomatrix`` of the pairs of object pixels at each
    distance in ``scales`` and direction in ``directions``, and ``graycoprops``' definitions of
    six Haralick features on it (evaluated on the matrix's non-zero cells, for speed). Cells whose
    nucleus is not found get NaN features.

    Parameters
    ----------
    crops : DataArray (cell, channel, y, x)
        Crop view (numpy- or dask-backed), e.g. from :func:`cpzarr.crops`; coordinates along
        ``cell`` are kept.
    masks : DataArray (cell, y, x), optional
        Imported nucleus masks (boolean or labels; the object under the centre is used).
    nucleus_channel : str
        Channel in which nuclei are segmented.
    nucleus_threshold : {"otsu", "li", "triangle"}
        scikit-image's automatic threshold used for the nucleus.
    compartments : sequence of {"Nuclei", "Cells", "Cytoplasm"}
        Compartments measured, in output order.
    cell_body : "distance-b" or int
        How the cell body is estimated (see above).
    scales : sequence of int
        Co-occurrence distances in pixels (CellProfiler's texture scales).
    directions : sequence of int
        CellProfiler direction codes: 0 horizontal, 1 and 3 diagonals, 2 vertical.
    levels : int
        Grey levels of the texture quantization (CellProfiler's default 256).

    Returns
    -------
    features : DataArray (cell, feature)
        float32, dask-backed when ``crops`` is, one chunk per chunk of ``crops`` along ``cell``;
        feature names from :func:`feature_names`.

    Raises
    ------
    InputError
        On a missing dimension or channel, an unknown compartment, direction or cell-body method,
        or masks that do not match the crops.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> from skimage.draw import disk
    >>> img = np.zeros((1, 2, 32, 32), np.float32)
    >>> img[0, 0][disk((16, 16), 6)] = 1.0
    >>> img[0, 1] = 0.5
    >>> crop = xr.DataArray(img, dims=("cell", "channel", "y", "x"), coords={"channel": ["DNA", "ER"]})
    >>> f = classical(crop, compartments=["Nuclei"], scales=[3])
    >>> float(f.sel(feature="Nuclei_Intensity_MeanIntensity_ER")[0])
    0.5

    On a store, lazily, written resumably by the CNN path's writer:

    >>> view = cpzarr.crops(screen, box=64, edge="pad")  # doctest: +SKIP
    >>> write_features("screen.zarr", "classical", classical(view))  # doctest: +SKIP
    """
    import dask.array as da

    _check(crops, masks, nucleus_channel, nucleus_threshold, compartments, cell_body, directions, levels)
    channels = [str(c) for c in crops["channel"].values]
    names = feature_names(channels, compartments=compartments, scales=scales, directions=directions, levels=levels)
    opts = dict(
        nucleus=channels.index(nucleus_channel),
        threshold=nucleus_threshold,
        compartments=tuple(compartments),
        cell_body=cell_body,
        scales=tuple(scales),
        angles=tuple(DIRECTIONS[d] for d in directions),
        levels=levels,
        n_features=len(names),
    )
    data = crops.data
    lazy = isinstance(data, da.Array) or (masks is not None and isinstance(masks.data, da.Array))
    if lazy:
        # One task per crop chunk: the per-cell loop needs whole channels and whole boxes.
        image = da.asarray(data).rechunk({1: -1, 2: -1, 3: -1})
        args = [image]
        if masks is not None:
            args.append(da.asarray(masks.data).rechunk((image.chunks[0], -1, -1))[:, None])
        out = da.map_blocks(
            _measure_block,
            *args,
            drop_axis=[2, 3],
            chunks=(image.chunks[0], (len(names),)),
            dtype=np.float32,
            meta=np.empty((0, 0), np.float32),
            token="features-classical",  # the task name on the dashboard
            **opts,
        )
    else:
        mask_block = None if masks is None else np.asarray(masks.data)[:, None]
        out = _measure_block(np.asarray(data), mask_block, **opts)
    coords = {k: v for k, v in crops.coords.items() if v.dims == ("cell",)}
    coords["feature"] = names
    return xr.DataArray(out, dims=("cell", "feature"), coords=coords, name="features")


def _check(crops, masks, nucleus_channel, nucleus_threshold, compartments, cell_body, directions, levels):
    problems = []
    dims = tuple(getattr(crops, "dims", ()))
    if dims != ("cell", "channel", "y", "x"):
        raise InputError(f"classical: crops must have dims (cell, channel, y, x), got {dims}")
    if "channel" not in crops.coords:
        problems.append("crops: no 'channel' coordinate naming the channels")
    elif nucleus_channel not in [str(c) for c in crops["channel"].values]:
        problems.append(
            f"nucleus_channel {nucleus_channel!r} is not a crop channel "
            f"({', '.join(map(str, crops['channel'].values))})"
        )
    if nucleus_threshold not in THRESHOLDS:
        problems.append(f"nucleus_threshold: {nucleus_threshold!r} is not one of {', '.join(THRESHOLDS)}")
    unknown = [c for c in compartments if c not in COMPARTMENTS]
    if unknown:
        problems.append(f"compartments: unknown {unknown} (allowed: {', '.join(COMPARTMENTS)})")
    bad_dirs = [d for d in directions if d not in DIRECTIONS]
    if bad_dirs:
        problems.append(f"directions: unknown {bad_dirs} (CellProfiler codes 0, 1, 2, 3)")
    distance = isinstance(cell_body, int) and not isinstance(cell_body, bool) and cell_body >= 0
    if not (cell_body == "distance-b" or distance):
        problems.append(f"cell_body: {cell_body!r} is neither 'distance-b' nor a distance in pixels")
    if not 2 <= int(levels) <= 256:
        problems.append(f"levels: {levels!r} is not in 2..256")
    if masks is not None:
        want = (crops.sizes["cell"], crops.sizes["y"], crops.sizes["x"])
        if tuple(masks.dims) != ("cell", "y", "x") or tuple(masks.shape) != want:
            problems.append(f"masks: dims {tuple(masks.dims)} shape {tuple(masks.shape)}; expected (cell, y, x) {want}")
    if problems:
        raise InputError("classical: invalid input", problems)


def _measure_block(
    image, masks=None, *, nucleus, threshold, compartments, cell_body, scales, angles, levels, n_features
):
    """Features of a block of crops: ``(cell, channel, y, x)`` → ``(cell, feature)`` float32."""
    out = np.full((image.shape[0], n_features), np.nan, np.float32)
    scaled = _to_unit(image)
    for i in range(image.shape[0]):
        mask = None if masks is None else masks[i, 0]
        regions = _segment(scaled[i], nucleus, mask, cell_body, threshold)
        if regions is None:
            continue
        row = []
        for comp in compartments:
            row.append(_measure(scaled[i], regions[comp], scales, angles, levels))
        out[i] = np.concatenate(row)
    return out


def _to_unit(image):
    """CellProfiler's intensity scale: integers over their dtype's maximum, floats unchanged."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) / np.float32(np.iinfo(image.dtype).max)
    return image.astype(np.float32, copy=False)


def _central(labels):
    """Label of the object under the box centre (or nearest to it within a quarter box), else 0."""
    from scipy import ndimage as ndi

    cy, cx = labels.shape[0] // 2, labels.shape[1] // 2
    if labels[cy, cx]:
        return int(labels[cy, cx])
    if not labels.any():
        return 0
    dist, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
    if dist[cy, cx] > min(labels.shape) / 4:
        return 0
    return int(labels[iy[cy, cx], ix[cy, cx]])


def _segment(crop, nucleus, mask, cell_body, threshold):
    """Nucleus, cell and cytoplasm masks of one crop ``(channel, y, x)``, or None without a nucleus."""
    from scipy import ndimage as ndi
    from skimage import filters
    from skimage.filters import gaussian, threshold_otsu
    from skimage.measure import label
    from skimage.segmentation import expand_labels, watershed

    if mask is not None:
        nuclei = label(mask) if mask.dtype == bool else np.asarray(mask, np.int32)
    else:
        dna = crop[nucleus]
        if dna.min() == dna.max():
            return None
        level = getattr(filters, f"threshold_{threshold}")(dna)
        nuclei = label(ndi.binary_fill_holes(dna > level))
    centre = _central(nuclei)
    if centre == 0:
        return None
    if cell_body == "distance-b":
        body = np.zeros(crop.shape[1:], np.float32)
        for c in range(crop.shape[0]):
            lo, hi = crop[c].min(), crop[c].max()
            if c != nucleus and hi > lo:
                body += (crop[c] - lo) / (hi - lo)
        body = gaussian(body, sigma=1.0)
        foreground = nuclei > 0
        if body.max() > body.min():
            foreground = ndi.binary_fill_holes(foreground | (body > threshold_otsu(body)))
        cells = watershed(np.zeros(body.shape, np.uint8), markers=nuclei, mask=foreground)
    else:
        cells = expand_labels(nuclei, distance=cell_body)
    nucleus_mask = nuclei == centre
    cell_mask = (cells == centre) | nucleus_mask
    return {"Nuclei": nucleus_mask, "Cells": cell_mask, "Cytoplasm": cell_mask & ~nucleus_mask}


def _measure(crop, mask, scales, angles, levels):
    """Shape, intensity of each channel and texture of each channel of one object."""
    from skimage.measure import regionprops

    n_shape = len(SHAPE) + 1
    n_int = len(INTENSITY)
    n_tex = len(scales) * len(angles) * len(TEXTURE)
    n_ch = crop.shape[0]
    values = np.full(n_shape + n_ch * (n_int + n_tex), np.nan, np.float64)
    if not mask.any():
        return values
    (props,) = regionprops(mask.astype(np.uint8), intensity_image=np.moveaxis(crop, 0, -1))
    shape = [float(props[p]) for p in SHAPE]
    perimeter = props["perimeter"]
    form_factor = 4 * np.pi * props["area"] / perimeter**2 if perimeter > 0 else np.nan
    values[:n_shape] = shape + [form_factor]
    centroid = np.asarray(props["centroid"])
    with np.errstate(invalid="ignore", divide="ignore"):  # a channel dark over the whole object
        weighted = np.atleast_2d(np.asarray(props["centroid_weighted"]))
    pixels = crop[:, mask].astype(np.float64)
    quartiles = np.quantile(pixels, [0.25, 0.5, 0.75], axis=1)
    integrated = pixels.sum(axis=1)
    # regionprops' weighted centroid divides by the channel's integrated intensity.
    displacement = np.where(integrated > 0, np.linalg.norm(weighted.reshape(2, -1).T - centroid, axis=1), np.nan)
    intensity = np.stack(
        [
            integrated,
            pixels.mean(axis=1),
            pixels.std(axis=1),
            pixels.min(axis=1),
            pixels.max(axis=1),
            quartiles[0],
            quartiles[1],
            quartiles[2],
            displacement,
        ],
        axis=1,
    )
    values[n_shape : n_shape + n_ch * n_int] = intensity.ravel()
    values[n_shape + n_ch * n_int :] = _haralick(crop, mask, scales, angles, levels)
    return values


def _haralick(crop, mask, scales, angles, levels):
    """Haralick features of the masked object, ordered channel, scale, direction, feature."""
    from skimage.feature import graycomatrix

    # Object pixels get levels 1..n and the outside 0, so dropping row and column 0 of the matrix
    # keeps only pairs of object pixels (mahotas's ignore_zeros in CellProfiler). The levels are
    # shifted so that the object's darkest level is 1: the six features depend only on level
    # differences, and the matrix shrinks from levels² to the object's range².
    rows, cols = np.nonzero(mask)
    window = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    inside = mask[window]
    quant = np.clip(np.round(crop[(slice(None), *window)] * (levels - 1)), 0, levels - 1).astype(np.int32)
    quant -= quant[:, inside].min(axis=1)[:, None, None] - 1
    quant[:, ~inside] = 0
    size = int(quant.max()) + 1
    n_ch = crop.shape[0]
    glcm = np.zeros((size - 1, size - 1, len(scales), n_ch * len(angles)), np.uint32)
    for c in range(n_ch):
        counts = graycomatrix(quant[c].astype(np.uint16), list(scales), list(angles), levels=size, symmetric=True)
        glcm[:, :, :, c * len(angles) : (c + 1) * len(angles)] = counts[1:, 1:]
    out = _glcm_properties(glcm).reshape(len(TEXTURE), len(scales), n_ch, len(angles))
    return out.transpose(2, 1, 3, 0).ravel()


def _glcm_properties(glcm):
    """``graycoprops``'s six properties of each matrix of ``glcm`` (L, L, D, A), from its non-zero cells.

    The definitions are scikit-image's (``graycoprops`` of 0.26: correlation 1 where a standard
    deviation vanishes; entropy converted to bits), evaluated on the non-zero cells only because a
    cell's co-occurrence matrix over 256 levels is mostly empty and the dense sums dominated the
    run time. Returns (6, D, A) in :data:`TEXTURE` order; NaN for empty matrices.
    """
    n_d, n_a = glcm.shape[2:]
    i, j, d, a = np.nonzero(glcm)
    which = d * n_a + a
    n = n_d * n_a
    total = np.bincount(which, glcm[i, j, d, a], minlength=n)
    p = glcm[i, j, d, a] / total[which]

    def per_matrix(values):
        return np.bincount(which, values, minlength=n)

    mean_i, mean_j = per_matrix(p * i), per_matrix(p * j)
    di, dj = i - mean_i[which], j - mean_j[which]
    var_i, var_j = per_matrix(p * di**2), per_matrix(p * dj**2)
    std = np.sqrt(var_i * var_j)
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.where(
            (np.sqrt(var_i) < 1e-15) | (np.sqrt(var_j) < 1e-15), 1.0, per_matrix(p * di * dj) / std
        )
    props = np.stack(
        [
            per_matrix(p**2),
            per_matrix(p * (i - j) ** 2),
            correlation,
            per_matrix(p / (1.0 + (i - j) ** 2)),
            per_matrix(-p * np.log(p)) / np.log(2),
            var_i,
        ]
    )
    props[:, total == 0] = np.nan
    return props.reshape(len(TEXTURE), n_d, n_a)
