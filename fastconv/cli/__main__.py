"""``python -m fastconv.cli ...`` runs the ``fastconv`` command."""
import sys

from fastconv.cli import main

sys.exit(main())
