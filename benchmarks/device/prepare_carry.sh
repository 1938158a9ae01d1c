#!/usr/bin/env bash
# Builds .devcarry/, what a lent GPU machine needs beside the repository (carry
# [".devcarry"] in the device call; common.sh installs and unpacks it there):
# the wheels its Python 3.12 image lacks, the JPEG copy of CIFAR-10 packed
# (pack_images.py: about 17 MiB, xz), and the commit being measured. Together
# with the repository this must stay under the 64 MiB that may travel.
# .devcarry/ is kept out of git by .git/info/exclude (a line "/.devcarry/").
#
#   bash benchmarks/device/prepare_carry.sh [DATA_FOLDER]
# Run it again after each commit that the device should measure (it only
# rewrites the commit file when the wheels and the pack are there).
set -eu
DATA=${1:-../shared/data/cifar10-jpeg75}
cd "$(git rev-parse --show-toplevel)"
mkdir -p .devcarry/whl
grep -qx "/.devcarry/" .git/info/exclude 2>/dev/null || echo "/.devcarry/" >> .git/info/exclude
if [ -z "$(ls .devcarry/whl)" ]; then
    python -m pip download -q --dest .devcarry/whl --only-binary=:all: \
        --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
        albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 \
        pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
        simsimd==6.5.16 stringzilla==5.3.2 torchinfo==1.8.0
fi
[ -f .devcarry/cifar10-jpeg75.pack ] ||
    python benchmarks/device/pack_images.py pack "$DATA" .devcarry/cifar10-jpeg75.pack
git rev-parse --short HEAD > .devcarry/commit
[ -z "$(git status --porcelain --untracked-files=no)" ] ||
    echo "warning: uncommitted changes; the device measures the working tree, not $(cat .devcarry/commit)"
du -sh .devcarry
