"""What Bedrock refuses before a model runs, in AWS's words: a SigV4 signature it does not
take, and the body rules of the Converse API. The vendor gate and the scripted fake
(tests/fakes/bedrock_server.py) both ask these, so the two refuse the same requests.

The signature is checked as AWS checks it: recomputed with botocore from the request as
received (the path as sent, %-escapes kept) and the credentials the server knows.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from typing import Any

import botocore.auth
import botocore.awsrequest
import botocore.credentials
from starlette.responses import JSONResponse

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/]+)/\d{8}/([^/]+)/bedrock/aws4_request, "
    r"SignedHeaders=([^,]+), Signature=([0-9a-f]+)"
)
# AWS's own words for the SigV4 failures (its common errors, which every service answers).
BAD_SIGNATURE = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
UNKNOWN_KEY = "The security token included in the request is invalid."
# Observed Converse refusals (ValidationException), word for word: see the README.
TOOL_CONFIG_NEEDED = "The toolConfig field must be defined when using toolUse and toolResult content blocks."
ROLES_MUST_ALTERNATE = (
    "A conversation must alternate between user and assistant roles. Make sure the conversation "
    "alternates between user and assistant roles and try again."
)


def aws_error(status: int, kind: str, message: str) -> JSONResponse:
    """An error as the bedrock-runtime endpoint sends it: the type in `x-amzn-ErrorType`,
    the words in a JSON `message`."""
    return JSONResponse(
        {"message": message},
        status_code=status,
        headers={"x-amzn-ErrorType": f"{kind}:http://internal.amazon.com/coral/com.amazon.bedrock/"},
    )


def signature_refusal(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    credentials: botocore.credentials.Credentials,
    region: str,
) -> JSONResponse | None:
    """AWS's 403 for a request whose SigV4 signature it would not take, or None.

    `url` is the URL as sent (scheme, host, and the raw path); `headers` in lower case."""
    authorization = headers.get("authorization", "")
    if not authorization:
        return aws_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
    match = _AUTHORIZATION.match(authorization)
    if not match or "x-amz-date" not in headers:
        return aws_error(403, "InvalidSignatureException", BAD_SIGNATURE)
    if match[1] != credentials.access_key:
        return aws_error(403, "UnrecognizedClientException", UNKNOWN_KEY)
    if match[2] != region:
        return aws_error(403, "InvalidSignatureException", "Credential should be scoped to a valid region.")
    signed = {h: headers[h] for h in match[3].split(";") if h in headers}
    copy = botocore.awsrequest.AWSRequest(method=method, url=url, data=body, headers=signed)
    copy.context["timestamp"] = headers["x-amz-date"]
    auth = botocore.auth.SigV4Auth(credentials, "bedrock", region)
    if auth.signature(auth.string_to_sign(copy, auth.canonical_request(copy)), copy) != match[4]:
        return aws_error(403, "InvalidSignatureException", BAD_SIGNATURE)
    return None


def body_refusal(body: Any) -> str | None:
    """The ValidationException message Converse answers a body it refuses, or None."""
    messages = body.get("messages") or [] if isinstance(body, dict) else []
    blocks = [block for m in messages for block in m.get("content") or []]
    if any("toolUse" in b or "toolResult" in b for b in blocks) and not body.get("toolConfig"):
        return TOOL_CONFIG_NEEDED
    roles = [m.get("role") for m in messages]
    if any(a == b for a, b in itertools.pairwise(roles)):
        return ROLES_MUST_ALTERNATE
    return None
