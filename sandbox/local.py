"""The local cloud: the DirectLink sandbox plus moto (DynamoDB, Secrets Manager, SSM, STS) on loopback."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import boto3
from moto.dynamodb.responses import DynamoHandler
from moto.server import ThreadedMotoServer

from chalicelib.ledger import create_table

from . import DirectLinkSandbox, SandboxClock, scenario

# moto's embedded werkzeug server logs every request line; the demo's output is for people.
logging.getLogger("werkzeug").setLevel(logging.ERROR)


def _serialize_moto_dynamodb() -> None:
    """Give moto's DynamoDB the atomicity the real one has.

    DynamoDB applies each request (a conditional write, a transaction) atomically. moto does not
    under threads: TransactWriteItems deep-copies tables that other threads are writing ("dictionary
    changed size during iteration"), and two conditional writes can both pass. The poller runs its
    targets on threads, so every in-process moto DynamoDB request here takes one lock.
    """
    if getattr(DynamoHandler.call_action, "serialized", False):
        return
    lock, call_action = threading.RLock(), DynamoHandler.call_action

    def serialized(self, *args, **kwargs):
        with lock:
            return call_action(self, *args, **kwargs)

    serialized.serialized = True
    DynamoHandler.call_action = serialized


_serialize_moto_dynamodb()

REGION = "eu-west-2"
TABLE = "vifgate-sandbox-ledger"
EVENTS_QUEUE, EVENTS_DLQ = "vifgate-sandbox-events.fifo", "vifgate-sandbox-events-dlq.fifo"
# moto accepts any key; this one also maps to the prod account in the DirectLink sandbox, so
# `aws directconnect ...` with the exported variables shows what osc-prod sees.
AWS_KEY, AWS_SECRET = scenario.KEYS[scenario.PROD]


class LocalCloud:
    """Start both emulators, seed the scenario, and say how to reach them."""

    def __init__(
        self, *, port: int = 0, aws_port: int = 0, clock: SandboxClock | None = None, workdir: Path | None = None
    ):
        self.clock = clock or SandboxClock()
        self.directlink = DirectLinkSandbox(flavor="outscale", region=REGION, clock=self.clock)
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=aws_port, verbose=False)
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="vifgate-sandbox-"))
        self.config_path = self.workdir / "vifgate.yaml"
        self._port = port
        self.world: scenario.World | None = None

    @property
    def aws_url(self) -> str:
        host, port = self.moto._server.server_address[:2]  # the port moto really bound (port 0 = any)
        return f"http://{host}:{port}"

    def env(self) -> dict[str, str]:
        """The variables that point vifgate, boto3 and the AWS CLI at the local cloud."""
        return {
            "AWS_ACCESS_KEY_ID": AWS_KEY,
            "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT_URL_DIRECT_CONNECT": self.directlink.url,
            "AWS_ENDPOINT_URL_DYNAMODB": self.aws_url,
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.aws_url,
            "AWS_ENDPOINT_URL_SSM": self.aws_url,
            "AWS_ENDPOINT_URL_SQS": self.aws_url,
            "AWS_ENDPOINT_URL_STS": self.aws_url,
            "VIFGATE_TABLE": TABLE,
            "VIFGATE_EVENTS_QUEUE": EVENTS_QUEUE,
            "VIFGATE_EVENTS_DLQ": EVENTS_DLQ,
            "VIFGATE_CONFIG": str(self.config_path),
        }

    def start(self) -> LocalCloud:
        self.moto.start()
        # moto keeps its state per process, not per server: start from an empty world every time.
        urllib.request.urlopen(urllib.request.Request(f"{self.aws_url}/moto-api/reset", method="POST"), timeout=10)
        self.directlink.start(port=self._port)
        self.world = scenario.seed(self.directlink)
        session = boto3.Session(aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_SECRET, region_name=REGION)
        provision(
            session.client("dynamodb", endpoint_url=self.aws_url),
            session.client("secretsmanager", endpoint_url=self.aws_url),
            TABLE,
        )
        create_queues(session.client("sqs", endpoint_url=self.aws_url), EVENTS_QUEUE, EVENTS_DLQ)
        self.config_path.write_text(scenario.CONFIG, encoding="utf-8")
        return self

    def stop(self) -> None:
        self.directlink.stop()
        self.moto.stop()

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def provision(dynamodb, secretsmanager, table: str) -> None:
    """The AWS side of the scenario: the ledger table and one credentials secret per target."""
    create_table(dynamodb, table)
    for target, account in scenario.TARGETS.items():
        access_key, secret_key = scenario.KEYS[account]
        secretsmanager.create_secret(
            Name=scenario.secret_id(target),
            SecretString=json.dumps({"access_key_id": access_key, "secret_access_key": secret_key}),
        )


def create_queues(sqs, events: str, dead_letters: str) -> str:
    """The events FIFO queue and its FIFO dead-letter queue, as infra/template.json declares them."""
    dlq_url = sqs.create_queue(QueueName=dead_letters, Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return sqs.create_queue(
        QueueName=events,
        Attributes={
            "FifoQueue": "true",
            "ContentBasedDeduplication": "false",
            "VisibilityTimeout": "360",
            "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 10}),
        },
    )["QueueUrl"]


def serve(port: int = 4566, aws_port: int = 5005) -> int:
    """`vifgate sandbox`: run until Ctrl-C, after printing the export lines."""
    clock = SandboxClock(ticking=True)  # time passes: confirmed VIFs come up on their own
    with LocalCloud(port=port, aws_port=aws_port, clock=clock) as cloud:
        print("# VIF Gatekeeper sandbox is up (loopback only). In another shell:")
        for name, value in cloud.env().items():
            print(f"export {name}={value}")
        print("\n# then, for example:")
        print("#   vifgate check")
        print("#   vifgate poll --dry-run")
        print("#   vifgate poll --json")
        print("#   aws directconnect describe-virtual-interfaces   # what osc-prod sees")
        print(f"#   curl -s -XPOST {cloud.directlink.url}/_sandbox/clock -d '{{\"advanceSeconds\": 86400}}'")
        print("# Ctrl-C stops it.", flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    print("sandbox stopped", file=sys.stderr)
    return 0
