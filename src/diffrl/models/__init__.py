"""Model loading and construction around diffusers (kept out of the math core)."""
