"""Synthetic well-level profile tables shaped like the LINCS evaluation subset."""

import numpy as np
import xarray as xr

from cpzarr.errors import InputError

_ROWS = "ABCDEFGHIJKLMNOP"


def make_profiles(
    n_plates=136,
    n_batches=5,
    n_negcon=24,
    n_compounds=1144,
    n_replicates=5,
    n_moas=235,
    n_features=6400,
    n_samples=8818,
    batch_effect=0.5,
    plate_effect=0.2,
    moa_effect=1.0,
    n_factors=32,
    dtype="float32",
    chunks=None,
    seed=0,
):
    """Make synthetic well profiles with plates, batches, DMSO wells, compounds, MOAs and batch effects.

    Every feature is ``offset + scale · (low-rank structure + noise)``: the low-rank part holds a
    batch effect, a smaller plate effect, an MOA signal shared by the compounds of one MOA, a
    compound signal and a per-well latent variation (so features correlate, as real ones do);
    DMSO wells carry no MOA or compound signal. Replicates of a compound sit on different plates.
    The same arguments always give the same array.

    Parameters
    ----------
    n_plates, n_batches : int
        Plates (384 wells each at most) and batches; plates are split evenly over batches.
    n_negcon : int
        DMSO (``control == "negcon"``) wells per plate.
    n_compounds, n_replicates : int
        Compounds and replicate wells per compound (one dose, 10 µM).
    n_moas : int
        MOAs; compound ``c`` gets MOA ``c % n_moas``, so every MOA has at least 2 compounds when
        ``n_compounds >= 2 * n_moas``.
    n_features : int
        Features (``f0000`` ...).
    n_samples : int or None
        Total wells wanted: the last replicate of the first compounds is dropped to reach it
        (the LINCS subset has 8,818 wells, not every compound has 5 replicates). ``None`` keeps all.
    batch_effect, plate_effect, moa_effect : float
        Standard deviations of those effects relative to the per-well noise.
    n_factors : int
        Rank of the shared structure.
    dtype : str, default "float32"
    chunks : int, optional
        Chunk size along ``sample``; given, the result is dask-backed.
    seed : int

    Returns
    -------
    profiles : DataArray (sample, feature)
        Coordinates along ``sample``: ``plate``, ``well``, ``batch``, ``compound``, ``dose``,
        ``moa``, ``control``, ``replicate``; sorted by plate and well.

    Examples
    --------
    >>> p = make_profiles(n_plates=4, n_batches=2, n_negcon=4, n_compounds=8, n_replicates=3,
    ...                   n_moas=4, n_features=16, n_samples=None)
    >>> p.sizes["sample"], int((p.control == "negcon").sum())
    (40, 16)
    """
    n_treated = n_compounds * n_replicates
    total = n_treated + n_plates * n_negcon
    if n_samples is None:
        n_samples = total
    drop = total - n_samples
    problems = []
    if n_replicates > n_plates:
        problems.append(f"n_replicates={n_replicates} > n_plates={n_plates}: replicates need distinct plates")
    if not 0 <= drop <= n_compounds:
        problems.append(f"n_samples={n_samples} cannot be reached from {total} wells by dropping one replicate per compound")
    if n_batches < 1 or n_batches > n_plates:
        problems.append(f"n_batches={n_batches} must be between 1 and n_plates={n_plates}")
    if n_moas < 1 or n_moas > n_compounds:
        problems.append(f"n_moas={n_moas} must be between 1 and n_compounds={n_compounds}")
    if problems:
        raise InputError("make_profiles: inconsistent sizes", problems)

    rng = np.random.default_rng(seed)
    compound = np.repeat(np.arange(n_compounds), n_replicates)
    replicate = np.tile(np.arange(n_replicates), n_compounds)
    keep = ~((compound < drop) & (replicate == n_replicates - 1))
    compound, replicate = compound[keep], replicate[keep]
    # Consecutive slots modulo n_plates put a compound's replicates on distinct plates.
    slot = np.flatnonzero(keep)
    plate_of = np.concatenate([slot % n_plates, np.repeat(np.arange(n_plates), n_negcon)])
    compound = np.concatenate([compound, np.full(n_plates * n_negcon, -1)])
    replicate = np.concatenate([replicate, np.tile(np.arange(n_negcon), n_plates)])
    per_plate = np.bincount(plate_of, minlength=n_plates)
    if per_plate.max() > 384:
        raise InputError(f"make_profiles: {per_plate.max()} wells on one plate exceed 384; add plates")

    order = np.lexsort((compound == -1, plate_of))
    plate_of, compound, replicate = plate_of[order], compound[order], replicate[order]
    # DMSO wells spread over the plate, treatments fill the other positions in row-major order.
    wells = np.array([f"{r}{c:02d}" for r in _ROWS for c in range(1, 25)], dtype=object)
    well = np.empty(len(order), dtype=object)
    for p in range(n_plates):
        rows = np.flatnonzero(plate_of == p)
        is_dmso = compound[rows] == -1
        dmso_pos = np.linspace(0, 383, int(is_dmso.sum())).round().astype(int)
        free = np.setdiff1d(np.arange(384), dmso_pos)
        well[rows[is_dmso]] = wells[dmso_pos]
        well[rows[~is_dmso]] = wells[free[: int((~is_dmso).sum())]]
    sort = np.lexsort((well, plate_of))
    plate_of, compound, replicate, well = plate_of[sort], compound[sort], replicate[sort], well[sort]

    batch_of_plate = np.arange(n_plates) * n_batches // n_plates
    batch_of = batch_of_plate[plate_of]
    treated = compound >= 0
    moa_of = np.where(treated, compound % n_moas, -1)

    k = n_factors
    loadings = rng.standard_normal((k, n_features)) / np.sqrt(k)
    batch_latent = rng.standard_normal((n_batches, k)) * batch_effect
    plate_latent = rng.standard_normal((n_plates, k)) * plate_effect
    moa_latent = rng.standard_normal((n_moas, k)) * moa_effect
    compound_latent = rng.standard_normal((n_compounds, k)) * (0.5 * moa_effect)
    latent = batch_latent[batch_of] + plate_latent[plate_of] + rng.standard_normal((len(sort), k)) * 0.5
    latent[treated] += moa_latent[moa_of[treated]] + compound_latent[compound[treated]]
    values = (latent.astype(np.float32) @ loadings.astype(np.float32)).astype(dtype, copy=False)
    values += rng.standard_normal(values.shape, dtype=np.float32).astype(dtype, copy=False)
    scale = rng.lognormal(0.0, 1.0, n_features).astype(dtype)
    offset = rng.normal(0.0, 5.0, n_features).astype(dtype)
    values *= scale
    values += offset

    names = np.array([f"C-{c:04d}" if c >= 0 else "DMSO" for c in compound], dtype=object)
    moas = np.array([f"moa-{m:03d}" if m >= 0 else "" for m in moa_of], dtype=object)
    profiles = xr.DataArray(
        values,
        dims=("sample", "feature"),
        name="profiles",
        coords={
            "plate": ("sample", np.array([f"P{p:03d}" for p in plate_of], dtype=object)),
            "well": ("sample", well),
            "batch": ("sample", np.array([f"B{b}" for b in batch_of], dtype=object)),
            "compound": ("sample", names),
            "dose": ("sample", np.where(treated, 10.0, 0.0)),
            "moa": ("sample", moas),
            "control": ("sample", np.where(treated, "trt", "negcon").astype(object)),
            "replicate": ("sample", replicate.astype(np.int64)),
            "feature": ("feature", np.array([f"f{j:04d}" for j in range(n_features)], dtype=object)),
        },
        attrs={"source": f"cpzarr.synthetic.make_profiles(seed={seed})"},
    )
    if chunks is not None:
        profiles = profiles.chunk({"sample": chunks, "feature": -1})
    return profiles
