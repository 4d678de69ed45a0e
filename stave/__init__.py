"""Stave: the data platform behind a text-to-music diffusion model (ARCHITECTURE.md)."""
