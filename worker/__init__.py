"""Queue-driven transcription worker (RabbitMQ in, whisper.cpp transcripts out)."""
