"""`vifgate poll --budget`: a slow-drip DirectLink endpoint cannot hold a run by hand for ever.

The server sends its headers, then one byte of the body every second: each read finishes within
botocore's read timeout, so without a budget the request (and the command) runs for minutes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sandbox import scenario

DRIP_SECONDS = 120  # bounded: the server gives up by itself


class _Drip(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(DRIP_SECONDS + 10))
        self.end_headers()
        for _ in range(DRIP_SECONDS):
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return  # the client gave up
            time.sleep(1)

    def log_message(self, *args: object) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass


@pytest.fixture
def drip():
    server = _Server(("127.0.0.1", 0), _Drip)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_poll_gives_up_on_a_slow_drip_target_at_its_budget(drip, tmp_path: Path):
    config = tmp_path / "policy.yaml"
    config.write_text(
        f'targets:\n  - {{name: slow, provider: aws, region: eu-west-1, account_id: "{scenario.PROD}",'
        f" endpoint_url: {drip}}}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "VIFGATE_"))}
    env |= {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
    }
    vifgate = Path(sys.executable).parent / "vifgate"
    started = time.monotonic()
    done = subprocess.run(
        [str(vifgate), "poll", "--config", str(config), "--budget", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert "FAILED slow: slow did not finish within 3s" in done.stdout
    assert elapsed < 15, f"vifgate ran {elapsed:.1f}s with a 4 s budget"


def test_the_budget_must_be_a_sane_number(capsys):
    from chalicelib import cli

    with pytest.raises(SystemExit):
        cli.main(["poll", "--config", "x", "--budget", "0"])
    assert "'0' is not a number of seconds from 1 to 3600" in capsys.readouterr().err
