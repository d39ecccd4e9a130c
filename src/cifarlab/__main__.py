"""Allow `python -m cifarlab ...` (used by torchrun: `torchrun -m cifarlab train ...`)."""

from cifarlab.cli import main

raise SystemExit(main())
