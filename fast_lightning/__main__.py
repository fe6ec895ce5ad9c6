import sys

from fast_lightning.cli import main

sys.exit(main())
