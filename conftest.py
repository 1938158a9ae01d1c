"""pytest settings shared by the unit tests and the notebooks (run by nbval)."""

import os

# Notebooks run in quick mode under pytest: small subsets, one short epoch.
# The kernels nbval starts inherit this environment.
os.environ.setdefault("CIFAR_LIB_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# albumentations asks PyPI for a newer version when imported; offline, that check
# warns, and the tests turn albumentations' warnings into errors.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
