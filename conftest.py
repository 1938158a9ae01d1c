"""pytest settings shared by the unit tests and the notebooks (run by nbval)."""

import os

# Notebooks run in quick mode under pytest: small subsets, one short epoch.
# The kernels nbval starts inherit this environment.
os.environ.setdefault("CIFAR_LIB_QUICK", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
