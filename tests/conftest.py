import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

import options  # noqa: E402

# Tests call training directly too: on the one thread every command uses (options.py says why).
options.use_run_threads()
