"""Audio in: decoding any input to 16 kHz mono samples (ffmpeg), WAV files, silence-aligned chunks."""
