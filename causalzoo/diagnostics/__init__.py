"""causalzoo.diagnostics."""
