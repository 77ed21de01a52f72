import os
import sys
from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))

# The tests never download: they use the shared copy of the Datasaurus Dozen beside the project.
SHARED_DATA = PROJECT_DIR.parent / "shared" / "data"
if (SHARED_DATA / "DatasaurusDozen.tsv").is_file():
    os.environ.setdefault("TINY_DIFFUSION_DATA_DIR", str(SHARED_DATA))

needs_datasaurus = pytest.mark.skipif(
    "TINY_DIFFUSION_DATA_DIR" not in os.environ,
    reason="no local DatasaurusDozen.tsv (set TINY_DIFFUSION_DATA_DIR)",
)
