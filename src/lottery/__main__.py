"""`python -m lottery ...` and `torchrun ... -m lottery ...`: the command line."""
import sys

from .cli import main

sys.exit(main())
