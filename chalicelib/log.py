"""One structured logger for the Lambdas and the CLI (JSON lines on stderr)."""

from __future__ import annotations

import logging
import sys

from aws_lambda_powertools import Logger


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (pytest and the CLI swap it), not at import time."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


logger = Logger(service="vif-gatekeeper", logger_handler=_StderrHandler())

# botocore logs whole response bodies at DEBUG, and a DescribeVirtualInterfaces body holds every
# VIF's authKey (the BGP secret). Those loggers never go below INFO, whatever the root level is.
for _name in ("botocore.parsers", "botocore.endpoint", "botocore.hooks", "urllib3.connectionpool"):
    logging.getLogger(_name).setLevel(logging.INFO)
