"""Statistics of image data for DSB probes: moments, max-ent samplers, OT edits, erasure."""
