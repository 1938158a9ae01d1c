"""cifar_lib: the package behind the CIFAR-10 course workbook.

Modules, each taught in one notebook:

* ``data``             CIFAR-10 from a download or a local folder (notebook 01)
* ``augment``          albumentations 2.x pipelines (notebook 01)
* ``layers``           depthwise-separable, dilated and transition blocks (02)
* ``receptive_field``  the analytic table and the empirical measurement (03)
* ``models``, ``constraints``  CIFAR10Netv2 and the assignment's rules (04)
* ``train``, ``plots``, ``checkpoints``, ``files``  training runs and their files (05)
* ``speed``, ``bench``     the same training, computed faster, and its benchmark
* ``graphs``             the training step, replayed on a GPU as one CUDA graph
* ``results``              the README's results table, made from ``results/``
* ``notebook``, ``colab``  helpers the notebooks share; self-contained Colab copies
* ``cli``                  ``python -m cifar_lib train|summary|bench``

Importing the package imports nothing heavy and changes no global state.
"""

__version__ = "0.1.0"
