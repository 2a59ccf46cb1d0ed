"""moto's S3 server as a real object store: a process on 127.0.0.1 and a free port, started
and stopped by PID. With a recording file it logs every request it receives, so that a server
started after it was stopped can be given its objects back (:meth:`MotoS3.replay`), as a real
object store keeps them across its own restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.server import free_port

STARTUP_TIMEOUT_S = 60.0


@dataclass
class MotoS3:
    log_path: Path
    recording: Path | None = None  # every request is appended here when set
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def start(self) -> MotoS3:
        """Start on the last port (a restart keeps the endpoint) or a free one."""
        self.port = self.port or free_port()
        env = {**os.environ, **self.extra_env}
        if self.recording is not None:
            env["MOTO_RECORDER_FILEPATH"] = str(self.recording)
            env["MOTO_ENABLE_RECORDING"] = "True"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto exited with {self.process.returncode}: {self.log()}")
            try:
                if httpx.get(f"{self.url}/moto-api/", timeout=1).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"moto did not answer within {STARTUP_TIMEOUT_S} s: {self.log()}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server by its PID (SIGKILL: gone at once, as a crash or a lost link)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(30)
        self.process = None

    def replay(self) -> None:
        """Send every recorded request again, to this (restarted) server: its objects back."""
        answer = httpx.post(f"{self.url}/moto-api/recorder/replay-recording", timeout=600)
        answer.raise_for_status()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **overrides: str) -> dict[str, str]:
        """The standard AWS variables a client of this server needs."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_RETRY_MODE": "standard",
            "AWS_MAX_ATTEMPTS": "2",
            **overrides,
        }

    def client(self) -> Any:
        """A boto3 S3 client of this server (for the tests' own look at the bucket)."""
        import boto3

        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing",
            region_name="us-east-1")
        return session.client("s3", endpoint_url=self.url)

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"pacs-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        """Every object of ``bucket`` under ``prefix``: key → bytes."""
        s3 = self.client()
        found = {}
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for entry in page.get("Contents", ()):
                found[entry["Key"]] = s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
        return found

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@contextmanager
def moto_s3(folder: Path, *, recording: bool = False) -> Iterator[MotoS3]:
    """A running moto S3 server, stopped (by PID) afterwards."""
    folder.mkdir(parents=True, exist_ok=True)
    server = MotoS3(log_path=folder / "moto.log",
                    recording=folder / "recording.jsonl" if recording else None)
    server.start()
    try:
        yield server
    finally:
        server.stop()
