"""Object proposals: sources (built-in, MCG, COB, JSON), cache, quality metrics."""
