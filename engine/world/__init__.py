"""The demo world: procedural landscapes with exact captions, object masks and attributes.

``scene`` samples a scene from a seed and renders it, ``raster`` draws it, ``captions``
describes it. The demo model is trained on it (``engine.training``) and the editing methods
are measured on its ground truth (``engine.evaluation``).
"""
