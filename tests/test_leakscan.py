"""tests/leakscan.py catches a secret however a test lets it out, names its kind, and never prints it.

Each case runs in a pytest of its own (a subprocess over a generated test file, the plugin loaded with
-p), so the failures it must produce stay there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BGP_KEY = "inner-bgp-key-0123456789abcdef"
WEBHOOK_SECRET = "whsec_aW5uZXItd2ViaG9vay1zaWduaW5nLWtleS0zMg=="
INNER = textwrap.dedent(
    f'''
    import logging

    from chalicelib.log import logger
    from tests import leakscan

    WEBHOOK_SIGNING_SECRET = "{WEBHOOK_SECRET}"  # found by its name, as in the real suites


    def test_logs_a_registered_key_through_the_product_logger():
        leakscan.register("{BGP_KEY}", "authKey")
        logger.info("vif decided", extra={{"vif": {{"authKey": "{BGP_KEY}"}}}})


    def test_prints_a_module_secret_and_reads_it_back(capsys):
        print("signing with", WEBHOOK_SIGNING_SECRET)
        assert WEBHOOK_SIGNING_SECRET in capsys.readouterr().out  # read, so gone from the report: still caught


    def test_logs_through_stdlib_logging(caplog):
        logging.getLogger("somewhere").warning("key=%s", "{BGP_KEY}")


    def test_sandbox_key_in_an_error_text():
        from sandbox import DirectLinkSandbox, scenario

        sb = DirectLinkSandbox()
        for account, (key, secret) in scenario.KEYS.items():
            sb.add_account(account, access_key=key, secret_key=secret)
        sb.add_location("PAR1", "Paris")
        connection = sb.add_connection(scenario.PARTNER, "p", "PAR1")
        vif = sb.allocate(connection, scenario.PROD, "prod-1", 101, 65001)  # the sandbox makes its authKey
        print("debug:", vif)  # a careless debug line holding the whole wire dict


    def test_clean():
        print("nothing secret here")
    '''
)


def run_inner(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(source, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "1000"}  # the short summary is cut to the width
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.leakscan", "-p", "no:cacheprovider", "-q", "-rf", str(test_file)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_way_out_is_caught_by_kind_and_no_value_is_printed(tmp_path):
    result = run_inner(tmp_path, INNER)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "4 failed, 1 passed" in out, out
    failures = dict(re.findall(r"FAILED \S+::(\w+) - (leak scan: .*)", out))
    assert set(failures) == {
        "test_logs_a_registered_key_through_the_product_logger",
        "test_prints_a_module_secret_and_reads_it_back",
        "test_logs_through_stdlib_logging",
        "test_sandbox_key_in_an_error_text",
    }, out
    assert "authKey" in failures["test_logs_a_registered_key_through_the_product_logger"]
    assert "webhook_signing_secret" in failures["test_prints_a_module_secret_and_reads_it_back"]
    assert "capsys" in failures["test_prints_a_module_secret_and_reads_it_back"]
    assert "authKey" in failures["test_logs_through_stdlib_logging"]
    assert "authKey (sandbox BGP key)" in failures["test_sandbox_key_in_an_error_text"]
    for secret in (BGP_KEY, WEBHOOK_SECRET):
        assert secret not in out, "the plugin printed (or let pytest print) the secret it found"
    summary = re.search(r"leak scan: (\d+) tests, (\d+) captured chars, (\d+) secrets found", out)
    assert summary and summary.group(1) == "5" and int(summary.group(2)) > 0 and int(summary.group(3)) >= 4, out


def test_a_clean_run_says_so(tmp_path):
    result = run_inner(tmp_path, "def test_quiet():\n    print('hello')\n")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"leak scan: 1 tests, \d+ captured chars, 0 secrets found", out), out
