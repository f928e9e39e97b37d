"""The codebook engine (pure torch, no SpeechBrain import): 1-D k-means, trained codebooks as
parametrizations and the quantizer lifecycle, b-bit packing and the packed safetensors export."""
