"""Integrations with model libraries: ``integrations.diffusers`` (diffusion UNets).

Each submodule imports its library only when used, so ``import bitsfusion`` never needs diffusers.
"""
