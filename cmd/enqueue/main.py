"""Publish a transcription job, as an upstream API would; optionally wait for its result.

    python cmd/enqueue/main.py AUDIO_OR_URL [--wait] [--timeout S] [--format json|txt]
                               [--model NAME] [--language xx] [--job-id ID] [--prompt TEXT] [--word-timestamps]
                               [--vad on|off] [--vad-threshold P] [--diarize channels|speakers] [--num-speakers N]

A local file is copied into INPUT_DIR (the worker reads jobs' `path` relative to it).
With --wait, prints the result and exits 1 if the job failed, 3 on timeout.
"""

import argparse
import json
import shutil
import sys
import time
import uuid
from pathlib import Path

from worker import wiring
from worker.config import Settings
from worker.logs import configure_logging
from worker.messages import Job, Result
from worker.service.publisher import declare, publish_job


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("audio", help="local audio file, or an http(s) URL")
    parser.add_argument("--wait", action="store_true", help="wait for the result and print it")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait with --wait")
    parser.add_argument("--format", choices=("json", "txt"), default="json", help="how to print the result")
    parser.add_argument("--model")
    parser.add_argument("--language")
    parser.add_argument("--job-id", default=None)
    parser.add_argument("--prompt", help="text that conditions every chunk (names, spellings, style)")
    parser.add_argument("--word-timestamps", action="store_true", help="each segment's words with times")
    parser.add_argument("--vad", choices=("on", "off"), help="speech detection (default: the worker's CHUNKING)")
    parser.add_argument("--vad-threshold", type=float, help="speech probability that starts speech")
    parser.add_argument("--diarize", choices=("off", "channels", "speakers"), default="off", help="who spoke when")
    parser.add_argument("--num-speakers", type=int, help="speakers in the recording (--diarize speakers)")
    return parser.parse_args()


def build_job(args: argparse.Namespace, settings: Settings, job_id: str) -> Job:
    if args.audio.startswith(("http://", "https://")):
        audio = {"url": args.audio}
    else:
        source = Path(args.audio)
        target = settings.input_dir / job_id / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        audio = {"path": f"{job_id}/{source.name}"}
    return Job.model_validate(
        {
            "job_id": job_id,
            "audio": audio,
            "model": args.model,
            "language": args.language,
            "prompt": args.prompt,
            "word_timestamps": args.word_timestamps,
            "vad": vad_field(args),
            "diarize": args.diarize,
            "num_speakers": args.num_speakers,
        }
    )


def vad_field(args: argparse.Namespace) -> bool | dict | None:
    if args.vad == "off":
        return False
    if args.vad_threshold is not None:
        return {"threshold": args.vad_threshold}
    return True if args.vad == "on" else None


def wait_for_result(channel, queue: str, job_id: str, timeout: float) -> Result | None:
    deadline = time.monotonic() + timeout
    for _method, properties, body in channel.consume(queue, auto_ack=True, inactivity_timeout=1.0):
        if body is not None and properties.correlation_id == job_id:
            return Result.model_validate_json(body)
        if time.monotonic() > deadline:
            return None
    return None


def main() -> int:
    args = parse_args()
    settings = Settings.from_environment()
    configure_logging(settings.log_level)
    job_id = args.job_id or uuid.uuid4().hex
    job = build_job(args, settings, job_id)
    connection = wiring.broker_connection(settings)
    channel = connection.channel()
    channel.confirm_delivery()
    topology = wiring.topology(settings)
    declare(channel, topology)
    reply_to = channel.queue_declare("", exclusive=True).method.queue if args.wait else None
    publish_job(
        channel,
        topology,
        job.model_dump_json(exclude_none=True).encode(),
        job_id,
        reply_to=reply_to,
        published_at=time.time(),
    )
    print(f"enqueued job {job_id}", file=sys.stderr)
    if not args.wait:
        connection.close()
        return 0
    result = wait_for_result(channel, reply_to, job_id, args.timeout)
    connection.close()
    if result is None:
        print(f"no result for job {job_id} within {args.timeout:g} s", file=sys.stderr)
        return 3
    if args.format == "txt" and result.status == "completed":
        print(result.text)
    else:
        print(json.dumps(json.loads(result.model_dump_json()), indent=2))
    return 0 if result.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
