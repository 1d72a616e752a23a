"""Repository-wide pytest setup: shared fixtures (broker, waiting helpers), the mongo tier."""

import os
import sys

_ROOT = os.path.dirname(os.path.abspath(__file__))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)  # testsupport

pytest_plugins = ["oakestra_net.testing", "testsupport.mongo"]
