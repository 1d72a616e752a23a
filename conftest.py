"""Repository-wide pytest setup: the shared test fixtures (broker, waiting helpers) and
the mongo tier (`--mongo`).

`oakestra_net.testing` was the old home of testsupport; the alias keeps tests written
against it importing until they use `testsupport` directly.
"""

import sys

import testsupport

sys.modules.setdefault("oakestra_net.testing", testsupport)

pytest_plugins = ["testsupport.plugin", "testsupport.mongo"]
