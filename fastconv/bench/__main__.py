"""``python -m fastconv.bench [--full] [--threads N] [--batch-size B]`` is ``fastconv bench``."""
import sys

from fastconv.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
