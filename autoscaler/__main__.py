"""`python -m autoscaler` is the `pd-autoscaler` command."""

import sys

from autoscaler.cli import main

sys.exit(main())
