"""The local cloud: the DirectLink sandbox plus moto (DynamoDB, Secrets Manager, SSM, STS) on loopback."""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from moto.dynamodb.responses import DynamoHandler
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from chalicelib.ledger import create_table

from . import DirectLinkSandbox, SandboxClock, scenario

if TYPE_CHECKING:
    from chalice.local import LocalDevServer

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

    serialized.serialized = True  # type: ignore[attr-defined]
    setattr(DynamoHandler, "call_action", serialized)  # noqa: B010 (mypy forbids assigning to a method)


_serialize_moto_dynamodb()

REGION = "eu-west-2"
TABLE = "vifgate-sandbox-ledger"
EVENTS_QUEUE, EVENTS_DLQ = "vifgate-sandbox-events.fifo", "vifgate-sandbox-events-dlq.fifo"
# moto accepts any key; this one also maps to the prod account in the DirectLink sandbox, so
# `aws directconnect ...` with the exported variables shows what osc-prod sees.
AWS_KEY, AWS_SECRET = scenario.KEYS[scenario.PROD]


class PortInUse(Exception):
    """A port the local cloud needs is taken; `service` says which ("directlink" or "aws")."""

    def __init__(self, service: str, port: int) -> None:
        super().__init__(f"port {port} is in use")
        self.service, self.port = service, port


def _listen(service: str, port: int, start: Callable[[], object]) -> None:
    try:
        start()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(service, port) from None
        raise


class MotoServer:
    """moto's server on 127.0.0.1, bound in the caller's thread.

    moto's ThreadedMotoServer binds in its own thread, where a taken port ends the thread and leaves
    start() waiting forever; binding here makes a taken port an OSError the caller can name.
    """

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        listener = socket.socket()
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self._port))
            listener.listen(128)
            app = DomainDispatcherApplication(create_backend_app)
            # werkzeug serves a duplicate of this socket (fd=...), so it never binds (or exits) itself.
            self._server = make_server(
                "127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler, fd=listener.fileno()
            )
        finally:
            listener.close()
        self._thread = threading.Thread(target=self._server.serve_forever, name="moto", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the AWS emulator is not running; call start() first")
        return f"http://127.0.0.1:{self._server.port}"  # the port really bound (port 0 = any)

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice, or before start()."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None


def _chalice_app() -> Any:
    """app.py's Chalice app: imported when it is on the path (tests, the checkout's root), else from the checkout."""
    import importlib
    import importlib.util

    try:
        return importlib.import_module("app").app
    except ModuleNotFoundError as exc:
        if exc.name != "app":
            raise
    path = Path(__file__).resolve().parent.parent / "app.py"
    spec = importlib.util.spec_from_file_location("app", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise RuntimeError(f"serving the approval routes needs the source checkout's app.py (not found at {path})")
    module = importlib.util.module_from_spec(spec)
    sys.modules["app"] = module  # one app object, as `import app` would give
    spec.loader.exec_module(module)
    return module.app


class ApiServer:
    """The Chalice app's routes (app.py) on 127.0.0.1, served by chalice.local's server in a thread.

    The app reads its settings from this process's environment, as a Lambda reads its own: LocalCloud
    points the environment at the local cloud before the first request.
    """

    def __init__(self, port: int = 0) -> None:
        self._port = port
        self._server: LocalDevServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from chalice.config import Config
        from chalice.local import ChaliceRequestHandler, CustomLocalChalice, LocalChalice, LocalDevServer

        class QuietHandler(ChaliceRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                """No request lines: a link's path is its token, a bearer credential that must not be logged."""

        app = _chalice_app()
        if not isinstance(app, LocalChalice):
            # What chalice.local.create_local_server does (a request per thread needs a thread-local
            # current_request), done once: a second time would make the class its own base.
            CustomLocalChalice.__bases__ = (LocalChalice, app.__class__)
            app.__class__ = CustomLocalChalice
        config = Config.create(chalice_stage="dev", app_name=app.app_name, chalice_app=app, lambda_timeout=30)
        # Binds here, in the caller's thread: a taken port is an OSError the caller can name.
        self._server = LocalDevServer(app, config, "127.0.0.1", self._port, handler_cls=QuietHandler)
        self._thread = threading.Thread(target=self._server.server.serve_forever, name="api", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the approval routes are not served; call start() first")
        return f"http://127.0.0.1:{self._server.server.server_address[1]}"

    def stop(self) -> None:
        """Stop serving and free the port; safe to call twice, or before start()."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None


class LocalPoller:
    """The sandbox's trigger: chalicelib's LocalTrigger, counting the cycles it started so they can be waited for."""

    def __init__(self, run: Callable[[str], object]) -> None:
        self._run = run
        self._running = 0
        self._idle = threading.Condition()

    def poll_now(self, target: str) -> bool:
        from chalicelib.approvals.trigger import LocalTrigger

        with self._idle:
            self._running += 1
        started = LocalTrigger(self._counted).poll_now(target)
        if not started:
            self._done()
        return started

    def _counted(self, target: str) -> object:
        try:
            return self._run(target)
        finally:
            self._done()

    def _done(self) -> None:
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    def settle(self, timeout: float) -> None:
        with self._idle:
            if not self._idle.wait_for(lambda: self._running == 0, timeout=timeout):
                raise TimeoutError(f"{self._running} triggered poll cycle(s) still running after {timeout:.0f}s")


class LocalCloud:
    """Start both emulators, seed the scenario, and say how to reach them.

    With `api_port` (0 = any free port) it also serves the app's approval routes on 127.0.0.1, with
    scenario.approvals_config(its URL) as the policy; the app then runs in this process, pointed at
    the local cloud through os.environ (restored on stop), with the sandbox's clock and a trigger that
    runs the poll cycle for one target in a thread, as the deployed API function invokes the poller.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        aws_port: int = 0,
        clock: SandboxClock | None = None,
        workdir: Path | None = None,
        api_port: int | None = None,
    ):
        self.clock = clock or SandboxClock()
        self.directlink = DirectLinkSandbox(flavor="outscale", region=REGION, clock=self.clock)
        self.moto = MotoServer(aws_port)
        self.api = ApiServer(api_port) if api_port is not None else None
        self._api_port = api_port
        self._saved_env: dict[str, str] | None = None
        self._poller: LocalPoller | None = None
        self._own_workdir = workdir is None  # a directory made here is removed on stop
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="vifgate-sandbox-"))
        self.config_path = self.workdir / "vifgate.yaml"
        self._port, self._aws_port = port, aws_port
        self._world: scenario.World | None = None

    @property
    def aws_url(self) -> str:
        return self.moto.url

    @property
    def world(self) -> scenario.World:
        """The seeded accounts, connection and VIFs."""
        if self._world is None:
            raise RuntimeError("the local cloud is not running; call start() first")
        return self._world

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
            # `vifgate` reads its time from the sandbox, so moving the sandbox's clock moves deadlines too.
            "VIFGATE_CLOCK": f"{self.directlink.url}/_sandbox/clock",
            **({"VIFGATE_API_URL": self.api.url} if self.api is not None else {}),
        }

    def start(self) -> LocalCloud:
        """Listen, seed and provision; on any failure (PortInUse when a port is taken) stop what started."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        _listen("directlink", self._port, lambda: self.directlink.start(port=self._port))
        _listen("aws", self._aws_port, self.moto.start)
        # moto keeps its state per process, not per server: start from an empty world every time.
        urllib.request.urlopen(urllib.request.Request(f"{self.aws_url}/moto-api/reset", method="POST"), timeout=10)
        self._world = scenario.seed(self.directlink)
        session = boto3.Session(aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_SECRET, region_name=REGION)
        provision(
            session.client("dynamodb", endpoint_url=self.aws_url),
            session.client("secretsmanager", endpoint_url=self.aws_url),
            TABLE,
        )
        create_queues(session.client("sqs", endpoint_url=self.aws_url), EVENTS_QUEUE, EVENTS_DLQ)
        if self.api is None:
            self.config_path.write_text(scenario.CONFIG, encoding="utf-8")
            return
        # Saved before the server is built: chalice's local server sets AWS_EXECUTION_ENV as it starts.
        self._saved_env = dict(os.environ)
        _listen("api", self._api_port or 0, self.api.start)
        self.config_path.write_text(scenario.approvals_config(self.api.url), encoding="utf-8")
        os.environ.update(self.env())
        self._serve_with_local_poller()

    def _serve_with_local_poller(self) -> None:
        """The routes' runtime: the sandbox's clock, and a trigger that runs one target's cycle here."""
        from chalicelib import runtime
        from chalicelib.reconcile import run_cycle

        routes = runtime.get_reader()  # what app.py's route handlers get: cached while the environment is unchanged
        routes.clock = self.clock
        # The deployed API function invokes the poll function; here the cycle runs in a thread.
        routes.trigger = self._poller = LocalPoller(lambda target: run_cycle(routes, targets=[target]))

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until every cycle the routes triggered has finished (the demo then shows what they did)."""
        if self._poller is not None:
            self._poller.settle(timeout)

    def stop(self) -> None:
        """Stop the servers, give the environment back, and remove the files this cloud made; safe to call twice."""
        if self.api is not None:
            self.api.stop()
        if self._saved_env is not None:
            os.environ.clear()
            os.environ.update(self._saved_env)
            self._saved_env = None
        self.directlink.stop()
        self.moto.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalCloud:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def provision(dynamodb, secretsmanager, table: str) -> None:
    """The AWS side of the scenario: the ledger table, one credentials secret per target, the approvals keys."""
    create_table(dynamodb, table)
    for target, account in scenario.TARGETS.items():
        access_key, secret_key = scenario.KEYS[account]
        secretsmanager.create_secret(
            Name=scenario.secret_id(target),
            SecretString=json.dumps({"access_key_id": access_key, "secret_access_key": secret_key}),
        )
    secretsmanager.create_secret(
        Name=scenario.APPROVALS_SECRET,
        SecretString=json.dumps(
            {"signing_key": scenario.SIGNING_KEY, "slack_signing_secret": scenario.SLACK_SIGNING_SECRET}
        ),
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


ENV_FILE = ".vifgate-sandbox.env"
PORT_FLAGS = {"directlink": "--port", "aws": "--aws-port", "api": "--api-port"}


def serve(port: int = 4566, aws_port: int = 5005, env_file: str | Path | None = None, api_port: int = 8000) -> int:
    """`vifgate sandbox`: run until Ctrl-C or SIGTERM, then remove every file it wrote."""
    env_file = Path(env_file or ENV_FILE).absolute()
    # Time passes by itself; the approval routes are served too.
    cloud = LocalCloud(port=port, aws_port=aws_port, clock=SandboxClock(ticking=True), api_port=api_port)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    written: str | None = None
    chat: ChatWindow | None = None
    try:
        cloud.start()
        written = write_env_file(env_file, cloud.env())
        chat = ChatWindow(cloud)
        print(ready_text(cloud, env_file), flush=True)
        chat.start()
        threading.Event().wait()  # until a signal raises KeyboardInterrupt here
    except KeyboardInterrupt:
        pass
    except PortInUse as exc:
        flag = PORT_FLAGS[exc.service]
        print(
            f"vifgate sandbox: port {exc.port} is in use (another sandbox?); pick another with {flag}", file=sys.stderr
        )
        return 1
    except OSError as exc:  # a port it may not bind, an env file it cannot write
        where = exc.filename or "127.0.0.1"
        print(f"vifgate sandbox: cannot start: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C while cleaning up must not leave files behind.
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        if chat is not None:
            chat.stop()
        cloud.stop()
        if written is not None:
            remove_env_file(env_file, written)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"sandbox stopped; removed {env_file} and {cloud.workdir}", file=sys.stderr)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM ends the sandbox the way Ctrl-C does, through the same cleanup."""
    raise KeyboardInterrupt


def write_env_file(path: Path, env: dict[str, str]) -> str:
    """Write `export` lines a shell can `source`; returns the text, so that only this text is removed later."""
    lines = [
        f"# VIF Gatekeeper sandbox (pid {os.getpid()}); removed when it stops. Use: source {shlex.quote(str(path))}"
    ]
    lines += [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
    text = "\n".join(lines) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    return text


def remove_env_file(path: Path, written: str) -> None:
    """Remove the env file unless another sandbox has written its own there since."""
    try:
        if path.read_text(encoding="utf-8") == written:
            path.unlink()
    except FileNotFoundError:
        pass


def _command(name: str) -> str:
    """How to type one of this environment's commands: bare when the shell finds this one, else its path."""
    path = Path(sys.executable).parent / name
    if shutil.which(name) == str(path):
        return name
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def ready_text(cloud: LocalCloud, env_file: Path) -> str:
    """What a person reads once the sandbox is up: where things are and the next commands."""
    vifgate, aws = _command("vifgate"), _command("aws")
    world = cloud.world
    advance = shlex.quote(json.dumps({"advanceSeconds": 5 * 86400}))
    api = (
        [f"  API         {cloud.api.url}  approval routes: /approvals/slack, /approvals/mattermost, /approvals/link/…"]
        if cloud.api is not None
        else []
    )
    approvals = (
        [
            f"  {vifgate} approvals                     # after a poll: the requests, each approver's link to open",
            f"  {vifgate} approve prod-legacy --as alice   # recorded, then confirmed at once",
            f"  {vifgate} reject lab-bench --as bob        # recorded, then deleted at once",
            f"  {vifgate} status                        # every VIF, its deadline, decisions and votes",
        ]
        if cloud.api is not None
        else []
    )
    return "\n".join(
        [
            "VIF Gatekeeper sandbox is up (127.0.0.1 only):",
            f"  DirectLink  {cloud.directlink.url}  {len(world.vif_ids)} hosted VIFs waiting in 3 accounts",
            f"  AWS (moto)  {cloud.aws_url}  ledger table, events queue, credentials",
            *api,
            f"  policy      {cloud.config_path}",
            f"  clock       {cloud.clock.now():%Y-%m-%d %H:%M} UTC, runs on; vifgate follows it when you move it",
            "",
            "Next, in another shell:",
            f"  source {shlex.quote(str(env_file))}",
            f"  {vifgate} check     # what each VIF would get; changes nothing",
            f"  {vifgate} poll      # confirms what the policy trusts, asks alice or bob about the rest",
            *approvals,
            f"  {aws} directconnect describe-virtual-interfaces   # the real protocol, as osc-prod",
            f"  curl -s -XPOST {cloud.directlink.url}/_sandbox/clock -d {advance}   # 5 days later...",
            f"  {vifgate} poll      # ...the VIFs still waiting get expiry warnings",
            "",
            "Chat messages (what the notify function would post) appear below.",
            "Ctrl-C stops the sandbox and removes the env file and the policy.",
        ]
    )


class ChatWindow:
    """Shows each event that reaches the sandbox's queue as the chat message people would read.

    It stands in for the notify function: it takes the events off the queue, as that function does.
    """

    def __init__(self, cloud: LocalCloud, out: Callable[[str], None] = print) -> None:
        session = boto3.Session(aws_access_key_id=AWS_KEY, aws_secret_access_key=AWS_SECRET, region_name=REGION)
        self._sqs = session.client("sqs", endpoint_url=cloud.aws_url)
        self._url = self._sqs.get_queue_url(QueueName=EVENTS_QUEUE)["QueueUrl"]
        self._out = out
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chat-window", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        from chalicelib import events
        from chalicelib.chatops import render

        from .demo import terminal

        while not self._stop.is_set():
            try:
                answer = self._sqs.receive_message(QueueUrl=self._url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
            except Exception as exc:  # the sandbox goes on; the person sees why messages stopped
                self._out(f"(chat window: cannot read the events queue: {exc})")
                self._stop.wait(5)
                continue
            for message in answer.get("Messages", []):
                self._out(terminal(render(events.parse(message["Body"])), fields=False) + "\n")
                self._sqs.delete_message(QueueUrl=self._url, ReceiptHandle=message["ReceiptHandle"])
