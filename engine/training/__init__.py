"""Training side of the demo model: the procedural demo world and its datasets."""
