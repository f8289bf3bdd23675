"""``python -m cnnkernels``: the same command as the ``cnnkernels`` script."""

from cnnkernels.cli import main

raise SystemExit(main())
