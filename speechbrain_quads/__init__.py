"""speechbrain-quads: quantized distillation of Whisper SLU models for SpeechBrain."""
