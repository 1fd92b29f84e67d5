"""edgekit: package Stable-Diffusion-style diffusers pipelines for phones and browsers.

Importing the package loads no converter SDK; each stage imports its heavy libraries when it runs.
"""
__version__ = "0.1.0"
