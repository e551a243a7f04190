"""`python -m diffrl.cli ...` (and `accelerate launch -m diffrl.cli ...`): the `diffrl` command."""
import sys

from diffrl.cli import main

sys.exit(main())
