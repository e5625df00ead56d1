"""`python -m pipeline --help`."""

import sys

from contract.cli import run_main
from pipeline.run import main

sys.exit(run_main(main))
