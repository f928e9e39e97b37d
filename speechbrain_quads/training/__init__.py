"""Training: the loss terms, the phase plan, the teacher cache, the probe and the Brains
(distillation, quantization, multi-stage combined training)."""
