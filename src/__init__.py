"""ssamba. Every command runs as `python -m src.<command>` from the repository root, so this runs
first: waiting OpenMP threads sleep instead of spinning (src/utils/threads.py says why), set before
torch loads OpenMP; an OMP_WAIT_POLICY you set yourself wins."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
