"""`python -m cluster`: run one member (see cluster/cli.py)."""

import sys

from cluster.cli import main

sys.exit(main())
