"""Server side of AWS Signature Version 4: check a received request's Authorization header."""

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import Message
from urllib.parse import parse_qsl, quote

from .directlink_state import ApiError

ALGORITHM = "AWS4-HMAC-SHA256"
_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)


@dataclass(frozen=True)
class _Authorization:
    access_key: str
    date: str
    region: str
    service: str
    signed_headers: list[str]
    signature: str


def _denied(code: str, message: str) -> ApiError:
    return ApiError(403, code, message)


def _parse(header: str | None) -> _Authorization:
    if not header:
        raise _denied("MissingAuthenticationTokenException", "Missing Authentication Token")
    algorithm, _, rest = header.partition(" ")
    if algorithm != ALGORITHM:
        raise _denied("IncompleteSignatureException", f"Authorization header must use {ALGORITHM}")
    parts = {}
    for item in rest.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts[key] = value
    for required in ("Credential", "SignedHeaders", "Signature"):
        if not parts.get(required):
            raise _denied("IncompleteSignatureException", f"Authorization header requires '{required}' parameter.")
    scope = parts["Credential"].split("/")
    if len(scope) != 5 or scope[4] != "aws4_request":
        raise _denied(
            "IncompleteSignatureException",
            "Credential must have the form <access key>/<yyyymmdd>/<region>/<service>/aws4_request.",
        )
    access_key, date, region, service, _ = scope
    return _Authorization(access_key, date, region, service, parts["SignedHeaders"].split(";"), parts["Signature"])


def _canonical_query(query: str) -> str:
    pairs = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in parse_qsl(query, keep_blank_values=True))
    return "&".join(f"{k}={v}" for k, v in pairs)


def _canonical_header(headers: Message, name: str) -> str:
    # A header absent from the request canonicalizes as empty, which then fails the comparison.
    return ",".join(" ".join(value.split()) for value in headers.get_all(name, []))


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def _expected_signature(
    method: str, path: str, query: str, headers: Message, body: bytes, auth: _Authorization, amz_date: str, secret: str
) -> str:
    """The signature the client should have sent, recomputed from what was received."""
    canonical_request = "\n".join(
        [
            method,
            quote(path or "/", safe="/~"),
            _canonical_query(query),
            "".join(f"{name}:{_canonical_header(headers, name)}\n" for name in auth.signed_headers),
            ";".join(auth.signed_headers),
            # The real body hash, never a client's X-Amz-Content-SHA256: a tampered body must fail.
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    string_to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(canonical_request.encode()).hexdigest()])
    key = _signing_key(secret, auth.date, auth.region, auth.service)
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def authenticate(
    method: str,
    path: str,
    query: str,
    headers: Message,
    body: bytes,
    *,
    region: str,
    service: str,
    credentials: Callable[[str], tuple[str, str] | None],
) -> str:
    """Return the caller's account id, or raise a 403 ApiError; credentials maps access key -> (account, secret)."""
    auth = _parse(headers.get("Authorization"))
    found = credentials(auth.access_key)
    if found is None:
        raise _denied("UnrecognizedClientException", "The security token included in the request is invalid.")
    account_id, secret = found
    amz_date = headers.get("X-Amz-Date", "")
    try:
        datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        raise _denied("IncompleteSignatureException", "X-Amz-Date header must be yyyymmddThhmmssZ") from None
    if amz_date[:8] != auth.date:
        raise _denied("InvalidSignatureException", "Date in Credential scope does not match the date of X-Amz-Date.")
    if auth.region != region:
        raise _denied(
            "InvalidSignatureException", f"Credential should be scoped to region '{region}', not '{auth.region}'."
        )
    if auth.service != service:
        raise _denied(
            "InvalidSignatureException", f"Credential should be scoped to service '{service}', not '{auth.service}'."
        )
    if not {"host", "x-amz-date"} <= set(auth.signed_headers):
        raise _denied("InvalidSignatureException", "SignedHeaders must include host and x-amz-date.")
    expected = _expected_signature(method, path, query, headers, body, auth, amz_date, secret)
    if not hmac.compare_digest(expected, auth.signature):
        raise _denied("InvalidSignatureException", _MISMATCH)
    return account_id
