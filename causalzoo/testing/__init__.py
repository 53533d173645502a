"""causalzoo.testing."""
