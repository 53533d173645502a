"""causalzoo.inference."""
