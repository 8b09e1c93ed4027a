"""Secrets and signatures, the Standard Webhooks way (v1: HMAC-SHA256 over
`{webhook-id}.{webhook-timestamp}.{body}`), signed by the `standardwebhooks`
package rather than by hand.

A secret is `whsec_` + base64 of 32 random bytes. During the 24 hours after a
rotation a delivery carries two signatures, the new secret's and the old
one's, space-separated in `webhook-signature` as the specification allows,
so a receiver can switch secrets without losing a delivery.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from functools import lru_cache

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
ROTATION_OVERLAP_S = 24 * 3600


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def signature(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: one `v1,<base64>` per secret."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    text = body.decode()
    return " ".join(_signer(s).sign(msg_id, moment, text) for s in secrets_)


@lru_cache(maxsize=1024)
def _signer(secret: str) -> Webhook:
    # Decoding the secret was half of a signature's 12 us.
    return Webhook(secret)
