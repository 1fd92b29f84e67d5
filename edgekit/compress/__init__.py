"""Structured compression of a pipeline's UNet: importance scores, pruning, slimmable widths and recovery
distillation. Each writes a diffusers directory plus structure.json that edgekit.pipeline reloads."""
