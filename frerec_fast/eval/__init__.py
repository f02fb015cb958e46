"""Diagnostics: spectral profiles of image sets and the frequency gap (method §8)."""
from .quality import image_size, quality_dirs
from .spectrum import DirProfile, load_dir, profile_dir, plot_profiles

__all__ = ["DirProfile", "load_dir", "profile_dir", "plot_profiles", "quality_dirs", "image_size"]
