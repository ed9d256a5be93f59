#!/usr/bin/env python3
"""Cold start of each Lambda bootstrap: the time from process start to a handled first
invocation, measured against a minimal Lambda Runtime API on 127.0.0.1.

Usage: .venv/bin/python scripts/coldstart.py [BOOTSTRAP_DIR] [RUNS]

BOOTSTRAP_DIR holds <function>/bootstrap (default target/lambda, what
`cargo lambda build --release` writes). Each function starts RUNS times (default 5) on
a migrated local database file, with AWS calls going to a moto server on 127.0.0.1
(scripts/setup.sh installs it; the connections table and routing queue are created as
the template does); the Runtime API hands it the sample event from events/ and the
clock stops when the function posts its response. Prints a table of
the bootstrap sizes and the median and worst start-to-response times.

This stands in for Lambda's own runtime API, which a bootstrap talks to the same way
(GET .../invocation/next, POST .../invocation/{id}/response). It measures the
process: start, runtime client, configuration, database open, one handled event. It
does not include Lambda's sandbox creation or code download.
"""

import atexit
import http.server
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS = {
    "webhook": "health.json",
    "classify-route": "classify-route-sqs.json",
    "sweeper": "sweeper-schedule.json",
    "ws-connect": "ws-connect.json",
    "ws-disconnect": "ws-disconnect.json",
    "ws-broadcast": "ws-default-ping.json",
}


class RuntimeApi(http.server.BaseHTTPRequestHandler):
    """One invocation per process: hands out the event, records the answer."""

    event = b"{}"
    answered = None  # (monotonic time, status path)
    served = False

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path.endswith("/invocation/next") and not RuntimeApi.served:
            RuntimeApi.served = True
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Lambda-Runtime-Aws-Request-Id", "coldstart-1")
            self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
            self.send_header(
                "Lambda-Runtime-Invoked-Function-Arn",
                "arn:aws:lambda:us-east-1:123456789012:function:coldstart",
            )
            self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
            self.send_header("Content-Length", str(len(RuntimeApi.event)))
            self.end_headers()
            self.wfile.write(RuntimeApi.event)
        else:
            # The next invocation never comes: the function waits until it is killed.
            time.sleep(30)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        if RuntimeApi.answered is None:
            RuntimeApi.answered = (time.monotonic(), self.path)
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


def once(bootstrap, event, env):
    RuntimeApi.event = event
    RuntimeApi.answered = None
    RuntimeApi.served = False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RuntimeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(env, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}")
    started = time.monotonic()
    process = subprocess.Popen([bootstrap], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while RuntimeApi.answered is None:
            if process.poll() is not None:
                raise RuntimeError(f"{bootstrap} exited with {process.returncode}")
            if time.monotonic() - started > 20:
                raise RuntimeError(f"{bootstrap} did not answer within 20 s")
            time.sleep(0.0005)
        at, path = RuntimeApi.answered
        return (at - started) * 1000, path.rsplit("/", 1)[-1]
    finally:
        process.kill()
        process.wait()
        server.shutdown()
        server.server_close()


def start_moto():
    """moto's server from .venv on a free loopback port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = subprocess.Popen(
        [str(ROOT / ".venv/bin/moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return moto, f"http://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("coldstart: moto did not start")
            time.sleep(0.1)


def aws(service, endpoint):
    import boto3  # installed in .venv with moto

    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def create_queue(endpoint):
    sqs = aws("sqs", endpoint)
    return sqs.create_queue(
        QueueName="routing.fifo",
        Attributes={"FifoQueue": "true", "VisibilityTimeout": "180"},
    )["QueueUrl"]


def create_table(endpoint):
    key = lambda name, kind: {"AttributeName": name, "KeyType": kind}  # noqa: E731
    index = lambda name, hash_key: {  # noqa: E731
        "IndexName": name,
        "KeySchema": [key(hash_key, "HASH"), key("connectionId", "RANGE")],
        "Projection": {"ProjectionType": "ALL"},
    }
    aws("dynamodb", endpoint).create_table(
        TableName="connections",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[
            {"AttributeName": name, "AttributeType": "S"}
            for name in ("connectionId", "departmentKey", "agentKey")
        ],
        KeySchema=[key("connectionId", "HASH")],
        GlobalSecondaryIndexes=[index("byDepartment", "departmentKey"), index("byAgent", "agentKey")],
    )
    return "connections"


def main():
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "target/lambda"
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    work = Path(tempfile.mkdtemp())
    moto, endpoint = start_moto()
    db = work / "coldstart.db"
    chat_router = ROOT / "target/debug/chat-router"
    base = {
        "PATH": os.environ.get("PATH", ""),
        "DATABASE_URL": str(db),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        # Every AWS call goes to moto on loopback.
        "AWS_ENDPOINT_URL": endpoint,
        "ROUTING_QUEUE_URL": create_queue(endpoint),
        "CONNECTIONS_TABLE": create_table(endpoint),
        "WEBSOCKET_ENDPOINT": endpoint,
        "AWS_LAMBDA_FUNCTION_NAME": "coldstart",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/coldstart",
        "AWS_LAMBDA_LOG_STREAM_NAME": "coldstart",
        "RUST_LOG": "warn",
    }
    if chat_router.exists():
        subprocess.run([chat_router, "migrate"], env=base, check=True, stdout=subprocess.DEVNULL)
    else:
        sys.exit("coldstart: build target/debug/chat-router first (cargo build -p chat-router-local)")

    atexit.register(moto.kill)
    print(f"\ncold start: process start to a handled first invocation, {runs} runs each")
    print(f"{'function':<16}{'bootstrap MB':>14}{'median ms':>11}{'max ms':>9}  answer")
    for name, event_file in FUNCTIONS.items():
        bootstrap = folder / name / "bootstrap"
        if not bootstrap.exists():
            print(f"{name:<16}{'missing':>14}")
            continue
        event = (ROOT / "events" / event_file).read_bytes()
        times, answer = [], ""
        for _ in range(runs):
            ms, answer = once(str(bootstrap), event, base)
            times.append(ms)
        size = bootstrap.stat().st_size / 1e6
        print(f"{name:<16}{size:>14.1f}{statistics.median(times):>11.1f}{max(times):>9.1f}  {answer}")


if __name__ == "__main__":
    main()
