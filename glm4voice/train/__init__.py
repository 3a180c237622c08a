"""Training: corpus synthesis, datasets and one trainer per component (uses the models; inference never imports
this)."""
