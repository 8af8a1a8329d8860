"""The sandbox serves the approval routes on 127.0.0.1; the demo decides two requests through them over HTTP."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from chalicelib.cli import main
from sandbox import scenario
from sandbox.demo import slack_request
from sandbox.local import LocalCloud, serve
from tests.test_cli import VIFGATE, Sandbox, _clean_env, _sourced

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with NO_PROXY.open(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def test_demo_approves_one_request_from_slack_and_rejects_one_through_its_link(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    part = out.split("== Approvals: ")[1]
    legacy, lab = re.search(r"(dxvif-\w+) prod-legacy", out), re.search(r"(dxvif-\w+) lab-bench", out)
    assert legacy and lab
    legacy_id, lab_id = legacy.group(1), lab.group(1)
    # The approval request as netops read it, with its real Block Kit buttons.
    assert "[!] Approval needed: VIF prod-legacy" in part
    assert '[Approve] (vifgate_approve)  [Reject] (vifgate_reject, asks "Reject this VIF?" first)' in part
    # alice's click: a signed block_actions payload, over HTTP to the local route; the poller confirms.
    assert (
        'POST /approvals/slack -> 200 {"ok":true,"status":"approved",'
        f'"summary":"approved by alice: confirming with {scenario.PROD_GATEWAY} now"}}'
    ) in part
    assert f"the poller, triggered for osc-prod: {legacy_id} is now pending" in part
    # bob's link: the page first (changes nothing), then the form; a second use is refused.
    assert "-> 200: Approve VIF lab-bench?" in part and "(a GET changes nothing)" in part
    assert "action=reject -> 200: Rejected — rejected by bob: deleting it now" in part
    assert f"the poller, triggered for osc-lab: {lab_id} is now rejected" in part
    assert "the same link again -> 409: Already decided" in part
    # What people read next, and the ledger's record of who decided.
    assert "[+] alice approved VIF prod-legacy (1 of 1)" in part
    assert "[+] VIF confirmed: prod-legacy" in part and "was confirmed by alice via Slack" in part
    assert "[!] bob rejected VIF lab-bench" in part and "[!] VIF rejected: lab-bench" in part
    trail = part.split("== The ledger's audit trail")[1]
    assert (
        f"alice ({scenario.APPROVERS['alice']['slack']}) via slack: approve with {scenario.PROD_GATEWAY} -> approved"
        in trail
    )
    assert "bob via link: reject -> rejected" in trail
    assert "the VIF was confirmed at " in trail and "the VIF was rejected at " in trail
    assert f"Confirm calls for {legacy_id}: 1; Delete calls: 1" in trail
    # The link's token is a bearer credential: the demo shows only its first characters.
    assert not re.search(r"/approvals/link/[A-Za-z0-9_-]{20,}", out)
    seconds = float(re.search(r"Demo finished in ([0-9.]+)s", out).group(1))  # type: ignore[union-attr]
    assert seconds < 30, "make demo stays a matter of seconds"


def test_local_cloud_serves_the_routes_on_loopback_and_gives_the_environment_back(tmp_path):
    before = dict(os.environ)
    with LocalCloud(workdir=tmp_path, api_port=0) as cloud:
        assert cloud.api is not None
        url = cloud.env()["VIFGATE_API_URL"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url) and url == cloud.api.url
        assert os.environ["VIFGATE_CONFIG"] == str(cloud.config_path)  # the app reads its settings from here
        assert f"base_url: {url}\n" in cloud.config_path.read_text()
        status, body = http("GET", f"{url}/health")
        assert (status, json.loads(body)) == (200, {"ok": True, "config": "valid", "problems": 0})
        port = int(url.rsplit(":", 1)[1])
    assert dict(os.environ) == before
    with socket.socket() as probe:  # nothing listens there any more (a closed connection may linger in TIME_WAIT)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()


def test_the_served_slack_route_verifies_signatures_like_the_deployed_one(tmp_path):
    with LocalCloud(workdir=tmp_path, api_port=0) as cloud:
        assert main(["poll"]) == 0
        assert cloud.api is not None
        from chalicelib.runtime import get

        found = get().ledger.approval_for_vif(cloud.world.vif_ids["prod-legacy"])
        assert found is not None
        body, headers = slack_request(found[0].request_id, "UALICE0001", "vifgate_approve", cloud.clock.now())
        forged = dict(headers, **{"X-Slack-Signature": "v0=" + "0" * 64})
        status, answer = http("POST", f"{cloud.api.url}/approvals/slack", body, forged)
        assert status == 401 and "does not match" in answer
        stale, stale_headers = slack_request(found[0].request_id, "UALICE0001", "vifgate_approve", cloud.clock.now())
        stale_headers["X-Slack-Request-Timestamp"] = str(int(cloud.clock.now().timestamp()) - 600)
        assert http("POST", f"{cloud.api.url}/approvals/slack", stale, stale_headers)[0] == 401
        assert cloud.directlink.confirm_count(cloud.world.vif_ids["prod-legacy"]) == 0
        status, answer = http("POST", f"{cloud.api.url}/approvals/slack", body, headers)
        assert status == 200 and '"status":"approved"' in answer
        cloud.settle()
        assert cloud.directlink.confirm_count(cloud.world.vif_ids["prod-legacy"]) == 1


def test_a_busy_api_port_is_named(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = serve(port=0, aws_port=0, env_file=tmp_path / "sb.env", api_port=port)
    assert code == 1
    err = capsys.readouterr().err
    assert err == f"vifgate sandbox: port {port} is in use (another sandbox?); pick another with --api-port\n"
    assert not (tmp_path / "sb.env").exists()


def test_vifgate_sandbox_serves_the_routes_a_link_from_vifgate_approvals_rejects(tmp_path):
    """What a new user does: start the sandbox, poll, list the approvals, open a link, reject."""
    env = _clean_env(tmp_path)
    sandbox = Sandbox(tmp_path, env, "--api-port", "0")
    try:
        env_file = sandbox.env_file()
        api_line = sandbox.wait_for("  API ")
        show = [sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"]
        exported = json.loads(_sourced(env_file, show, env, tmp_path).stdout)
        api = exported["VIFGATE_API_URL"]
        assert api.startswith("http://127.0.0.1:") and api in api_line
        assert sandbox.wait_for("vifgate approvals")  # the next steps name the approval commands

        poll = _sourced(env_file, [*VIFGATE, "poll"], env, tmp_path)
        assert poll.returncode == 0, poll.stderr
        listed = _sourced(env_file, [*VIFGATE, "approvals", "--json"], env, tmp_path)
        assert listed.returncode == 0, listed.stderr
        rows = {r["virtualInterfaceName"]: r for r in map(json.loads, listed.stdout.splitlines())}
        link = rows["lab-bench"]["links"]["bob"]
        assert link.startswith(f"{api}/approvals/link/")

        status, page = http("GET", link)
        assert status == 200 and "Approve VIF lab-bench?" in page
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        status, page = http("POST", link, b"action=reject", form)
        assert status == 200 and "rejected by bob" in page
        sandbox.wait_for("[!] VIF rejected: lab-bench")  # the triggered cycle deleted it; chat shows it

        done = _sourced(env_file, [*VIFGATE, "status", "--json"], env, tmp_path)
        lab = next(r for r in map(json.loads, done.stdout.splitlines()) if r["virtualInterfaceName"] == "lab-bench")
        assert lab["approval"]["status"] == "rejected" and lab["rejectedAt"]
        assert [(v["approver"], v["channel"]) for v in lab["approval"]["votes"]] == [("bob", "link")]
    finally:
        err = sandbox.stop(signal.SIGTERM)
    assert sandbox.process.returncode == 0, err
    token = link.rsplit("/", 1)[1]
    assert token not in "".join(sandbox.lines) + err  # a link is never logged, not even as a request line
    assert "Traceback" not in err and not env_file.exists()
    assert list(Path(tmp_path / "tmp").iterdir()) == []


@pytest.fixture(autouse=True)
def _no_leftover_app_environment():
    """LocalCloud with the routes points os.environ at itself while it runs; each test must end with it given back."""
    before = {k: v for k, v in os.environ.items() if k.startswith("VIFGATE_")}
    yield
    assert {k: v for k, v in os.environ.items() if k.startswith("VIFGATE_")} == before
