"""Net manager tests: make the shared fakes (nm_fakes) importable."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
