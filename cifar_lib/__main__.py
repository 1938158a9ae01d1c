import sys

from cifar_lib.cli import main

sys.exit(main())
