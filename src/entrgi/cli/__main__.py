"""``python -m entrgi.cli`` = ``entrgi``."""

import sys

from .commands import main

sys.exit(main())
