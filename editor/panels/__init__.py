"""Dock panels: prompt & method parameters, results history, tools & layers."""
