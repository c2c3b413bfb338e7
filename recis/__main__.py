"""`python -m recis ...` is the `recis` command."""
import sys

from recis.cli import main

sys.exit(main())
