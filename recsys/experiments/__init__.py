"""Experiments on the engine's stages (feature selection, ...)."""
