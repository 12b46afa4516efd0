"""Diffusion backbones (DiT, DiMR), TD-LN, schedules and samplers."""
