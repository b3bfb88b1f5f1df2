"""`python -m trainers.cli` (and `torchrun -m trainers.cli`, `accelerate launch -m trainers.cli`): the `hf-vlp` CLI."""

import sys

from . import main


sys.exit(main())
