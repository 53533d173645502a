"""causalzoo.blocks."""
