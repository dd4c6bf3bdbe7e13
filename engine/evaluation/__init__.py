"""Measurements on the demo world's ground truth: the demo model itself (``evaluate``) and
the editing methods (``evaluate_edits``), on seed ranges disjoint from training
(``seed_ranges``)."""
