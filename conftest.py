"""Repository-wide pytest setup: the shared test fixtures (broker, waiting helpers) and
the mongo tier (`--mongo`)."""

pytest_plugins = ["testsupport.plugin", "testsupport.mongo"]
