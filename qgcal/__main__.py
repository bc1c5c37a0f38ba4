"""python -m qgcal"""

import sys

from qgcal.cli import main

sys.exit(main())
