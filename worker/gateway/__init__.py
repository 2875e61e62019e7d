"""The HTTP gateway: OpenAI's audio API in front of the jobs queue (cmd/gateway)."""
