"""Inference and deployment: the exported model folder, the EncoderClassifier-style pretrained
interface and the classify CLI."""
