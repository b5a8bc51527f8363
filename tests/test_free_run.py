"""Free run: the identity technique."""

from contracts import TechniqueContract


class TestContract(TechniqueContract):
    name = "free_run"
