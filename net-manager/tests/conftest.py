"""Net manager tests: make the shared fakes (nm_fakes) and the test folders importable."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
