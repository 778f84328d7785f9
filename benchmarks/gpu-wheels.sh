#!/usr/bin/env bash
# Here, where pip reaches the registries: the Python 3.12 wheels benchmarks/gpu.sh needs that the GPU machine's
# image lacks (it has torch, triton, transformers, xarray, pandas, safetensors, tokenizers, scikit-learn, pytest...),
# into .whl/ (ignored by git). The device call then names .whl in `carry`; gpu.sh installs them into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl \
    "zarr>=3.1,<3.2" "icechunk>=1.1,<2" "numcodecs>=0.16" crc32c donfig "dask>=2025.1" "distributed>=2025.1" zict \
    tblib locket partd tornado liger-kernel
du -sh .whl
