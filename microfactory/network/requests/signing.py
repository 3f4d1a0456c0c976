"""Signing and checking the messages of a fabrication request.

Both message types are compact JWS with the header {"alg": "Ed25519", "kid": <shop id>} over
the RFC 8785 canonical JSON of the payload, as capacity reports are, and are checked with
the hub's code for reports (`microfactory.network.hub.verify`): the form, the canonical
bytes, the key in the payload whose RFC 7638 thumbprint is the `kid`, the signature. Here
the payload also says which shop it is for (`to`), so a message cannot be replayed to a
third shop, and which request it belongs to.

A request (A → B):
    {"type": "microfactory.fabrication-request/1", "id": <uuid>, "shop_id": <A>, "key": <A's
     public JWK>, "url": <A's base URL>, "to": <B>, "sequence": n, "issuedAt": ..,
     "expiresAt": .., "design": {"hash": <sha256>, "title": ..}, "parameters": {..},
     "material": .. | null, "quantity": n, "dueDate": "YYYY-MM-DD", "requester": <pseudonym>,
     "contact": .. | null}
An update (B → A):
    {"type": "microfactory.fabrication-update/1", "request": <uuid>, "shop_id": <B>, "key":
     <B's public JWK>, "url": <B's base URL>, "to": <A>, "sequence": n, "issuedAt": ..,
     "expiresAt": .., "status": accepted|countered|declined|started|finished|collected,
     "reason": .. | null, "quote": {..} | null, "proposedDate": .. | null,
     "outcome": good|bad|null}
A reply to a counter-offer (A → B, to B's `/requests/{id}/updates`): the same type, signed
by A, with "status": agreed|withdrawn and the "proposedDate" agreed to.
"""

from __future__ import annotations

import binascii
import datetime as dt
import warnings
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from microfactory.errors import BadRequestError, InvalidInputError, NotAuthenticatedError
from microfactory.network.hub import verify as hub_verify
from microfactory.network.identity import ShopKey

REQUEST_TYPE = "microfactory.fabrication-request/1"
UPDATE_TYPE = "microfactory.fabrication-update/1"
STATUSES = (
    "accepted", "countered", "declined", "started", "finished", "collected",
    # from the requesting shop: its answer to a counter-offer
    "agreed", "withdrawn",
)  # fmt: skip
MAX_JWS_BYTES = 64 * 1024
_REGISTRY = JWSRegistry(algorithms=list(hub_verify.ALGORITHMS))


# A request or update whose form, key and signature check out: the same shape as a verified
# capacity report (the JWS as received, the signer, its key, sequence, times and payload).
Verified = hub_verify.VerifiedReport


def times(now: dt.datetime, ttl_s: int) -> tuple[str, str]:
    """Return issuedAt and expiresAt for a message signed now."""
    issued = now.astimezone(dt.UTC).replace(microsecond=0)
    expires = issued + dt.timedelta(seconds=ttl_s)
    return _z(issued), _z(expires)


def _z(when: dt.datetime) -> str:
    return when.isoformat().replace("+00:00", "Z")


def sign(payload: dict[str, Any], shop: ShopKey) -> str:
    """Sign a payload's RFC 8785 form with the shop's key (compact JWS)."""
    return shop.sign(rfc8785.dumps(payload))


def _timestamp(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise BadRequestError(f'"{name}" must be a UTC ISO 8601 time ending in Z')
    try:
        return dt.datetime.fromisoformat(value[:-1] + "+00:00").astimezone(dt.UTC)
    except ValueError:
        raise BadRequestError(f'"{name}" is not an ISO 8601 time: {value[:40]!r}') from None


def _public_key(value: Any) -> tuple[dict[str, Any], OKPKey]:
    if not isinstance(value, dict) or value.get("kty") != "OKP" or value.get("crv") != "Ed25519":
        raise BadRequestError('"key" must be an Ed25519 public JWK (kty OKP)')
    if "d" in value:
        raise BadRequestError('"key" holds a private key; send the public one')
    x = value.get("x")
    if not isinstance(x, str):
        raise BadRequestError('"key" has no "x"')
    public: dict[str, Any] = {"kty": "OKP", "crv": "Ed25519", "x": x}
    try:
        key = OKPKey.import_key(public)
    except (JoseError, ValueError, binascii.Error) as exc:
        raise BadRequestError(f'"key" is not a valid Ed25519 key: {exc}') from None
    return public, key


def verify(token: str | bytes, *, kind: str, to: str | None) -> Verified:
    """Check a message's form (400), its key and signature (401), and that it is for us (422).

    `to` None: a message for anyone (a shop's design list, pushed to hubs).
    """
    raw = token.encode() if isinstance(token, str) else token
    if len(raw) > MAX_JWS_BYTES:
        raise BadRequestError(f"the message is larger than {MAX_JWS_BYTES} bytes")
    header, payload, raw_payload = hub_verify.parse(raw)
    if payload.get("type") != kind:
        raise BadRequestError(f'the message\'s "type" must be "{kind}"')
    if not hub_verify.is_canonical(payload, raw_payload):
        raise BadRequestError("the JWS payload is not the message's RFC 8785 canonical JSON")
    sequence = payload.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or not 0 <= sequence < 2**62:
        raise BadRequestError('"sequence" must be a non-negative integer')
    public, key = _public_key(payload.get("key"))
    kid = header["kid"]
    if hub_verify.thumbprint(public) != kid:
        raise NotAuthenticatedError('the JWS "kid" is not the RFC 7638 thumbprint of "key"')
    if payload.get("shop_id") != kid:
        raise NotAuthenticatedError('the message\'s "shop_id" is not the JWS "kid"')
    text = raw.decode("ascii", errors="replace").strip()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="EdDSA is deprecated")
            jws.deserialize_compact(text, key, registry=_REGISTRY)
    except JoseError:
        raise NotAuthenticatedError("the message's signature does not verify") from None
    if to is not None and payload.get("to") != to:
        raise InvalidInputError(
            "the message is addressed to another shop", reason="wrong_recipient"
        )
    return Verified(
        jws=text,
        shop_id=kid,
        public_jwk=public,
        sequence=sequence,
        issued_at=_timestamp(payload.get("issuedAt"), "issuedAt"),
        expires_at=_timestamp(payload.get("expiresAt"), "expiresAt"),
        payload=payload,
    )


def check_times(message: Verified, *, now: dt.datetime, clock_skew_s: int = 300) -> None:
    """Refuse an expired message, or one issued in the future beyond the skew (422)."""
    if message.expires_at <= now or message.expires_at <= message.issued_at:
        raise InvalidInputError(
            f"the message expired at {_z(message.expires_at)} (now {_z(now.astimezone(dt.UTC))})",
            reason="expired",
        )
    if message.issued_at > now + dt.timedelta(seconds=clock_skew_s):
        raise InvalidInputError(
            f"the message is issued at {_z(message.issued_at)}, more than {clock_skew_s} s "
            "ahead of this shop's clock",
            reason="future",
        )
