"""Drop from deployment.zip what the Lambda Python runtime already provides (boto3's own stack).

aws-xray-sdk (Powertools' tracer) depends on botocore, and chalice package bundles it with
urllib3, python-dateutil, six and jmespath: 16 MB more in the zip, and a bundled botocore would
shadow the runtime's, out of step with the runtime's boto3. Lambda's python3.13 runtime ships
boto3, botocore, s3transfer, jmespath, urllib3, python-dateutil and six.

    python infra/slim_package.py build/prod/deployment.zip
"""

from __future__ import annotations

import os
import re
import sys
import zipfile

PROVIDED = re.compile(
    r"^(botocore|boto3|s3transfer|jmespath|urllib3|dateutil)(/|-[^/]*\.(dist-info|data)/)"
    r"|^(python_dateutil|six)-[^/]*\.dist-info/|^six\.py$"
)


def slim(path: str) -> tuple[int, int, int]:
    """Rewrite the zip without the runtime's packages; returns (bytes before, bytes after, entries dropped)."""
    before, dropped = os.path.getsize(path), 0
    slimmed = path + ".slim"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(slimmed, "w", zipfile.ZIP_DEFLATED) as target:
        for info in source.infolist():
            if PROVIDED.match(info.filename):
                dropped += 1
                continue
            target.writestr(info, source.read(info))
    os.replace(slimmed, path)
    return before, os.path.getsize(path), dropped


if __name__ == "__main__":
    for name in sys.argv[1:]:
        old, new, count = slim(name)
        print(f"{name}: {old:,} -> {new:,} bytes ({count} files the Lambda runtime provides left out)")
