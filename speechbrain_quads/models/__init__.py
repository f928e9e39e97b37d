"""Whisper models: weight conversion from the offline packages, the per-utterance log-mel front
end, masked variable-length teacher and student encoders, the positional table, the intent head."""
