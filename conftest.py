"""Repository-wide pytest setup: the shared test fixtures (broker, waiting helpers)."""

pytest_plugins = ["oakestra_net.testing"]
