"""Diffusion Editor's desktop GUI (PySide6). The only package that imports Qt.

The engine (``engine/``) runs models on its own thread; ``editor.bridge`` turns its events
into queued Qt signals. Widgets never call into torch.
"""
