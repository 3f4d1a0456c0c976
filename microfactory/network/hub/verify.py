"""Check a signed capacity report: its form, its key, its signature and its times.

Everything a hub checks without its database: the pin, the sequence and storage are
`ingest`'s. joserfc 1.8 knows RFC 9864's fully specified "Ed25519" and the older "EdDSA"
(deprecated by RFC 9864, still accepted: it warns, which we silence for that one name).
"""

from __future__ import annotations

import binascii
import datetime as dt
import json
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey
from joserfc.jws import JWSRegistry

from microfactory.errors import BadRequestError, InvalidInputError, NotAuthenticatedError

REPORT_TYPE = "microfactory.capacity/1"
ALGORITHMS = ("Ed25519", "EdDSA")
MAX_JWS_BYTES = 256 * 1024  # a report with 50 machines and a week of free hours is ~30 KB
# Only these two names, and only the protected header fields the contract puts there.
_REGISTRY = JWSRegistry(algorithms=list(ALGORITHMS))


@dataclass(frozen=True)
class VerifiedReport:
    """A report whose signature and key check out; `payload` is the parsed JSON."""

    jws: str
    shop_id: str
    public_jwk: dict[str, Any]
    sequence: int
    issued_at: dt.datetime
    expires_at: dt.datetime
    payload: dict[str, Any]


def _timestamp(value: Any, name: str) -> dt.datetime:
    if not isinstance(value, str) or not value.endswith("Z"):
        raise BadRequestError(f"live.{name} must be a UTC ISO 8601 time ending in Z")
    try:
        parsed = dt.datetime.fromisoformat(value[:-1] + "+00:00")
    except ValueError:
        raise BadRequestError(f"live.{name} is not an ISO 8601 time: {value[:40]!r}") from None
    return parsed.astimezone(dt.UTC)


def thumbprint(public_jwk: dict[str, Any]) -> str:
    """Return the RFC 7638 SHA-256 thumbprint of a public Ed25519 JWK."""
    return str(OKPKey.import_key(public_jwk).thumbprint())


def _public_key(value: Any) -> tuple[dict[str, Any], OKPKey]:
    if not isinstance(value, dict) or value.get("kty") != "OKP" or value.get("crv") != "Ed25519":
        raise BadRequestError('the report\'s "key" must be an Ed25519 public JWK (kty OKP)')
    if "d" in value:
        raise BadRequestError('the report\'s "key" holds a private key; send the public one')
    x = value.get("x")
    if not isinstance(x, str):
        raise BadRequestError('the report\'s "key" has no "x"')
    public: dict[str, Any] = {"kty": "OKP", "crv": "Ed25519", "x": x}
    return public, _import(x)[0]


# Imported keys and their thumbprints by "x": a shop pushes with the same key every time, and
# importing and hashing it is a tenth of a report's verification. Only valid keys are kept.
_KEYS: dict[str, tuple[OKPKey, str]] = {}
_KEYS_MAX = 4096


def _import(x: str) -> tuple[OKPKey, str]:
    found = _KEYS.get(x)
    if found is not None:
        return found
    try:
        key = OKPKey.import_key({"kty": "OKP", "crv": "Ed25519", "x": x})
    except (JoseError, ValueError, binascii.Error) as exc:
        raise BadRequestError(f'the report\'s "key" is not a valid Ed25519 key: {exc}') from None
    if len(_KEYS) >= _KEYS_MAX:
        _KEYS.clear()
    found = _KEYS[x] = (key, str(key.thumbprint()))
    return found


def parse(token: str | bytes) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """Split a compact JWS into its protected header, parsed payload and raw payload (400)."""
    obj, payload, _tricky = _parse(token)
    return dict(obj.protected), payload, obj.payload


def _parse(token: str | bytes) -> tuple[jws.CompactSignature, dict[str, Any], bool]:
    tricky = False

    def parse_constant(text: str) -> float:
        raise BadRequestError(f"the JWS payload holds {text}, which JSON (RFC 8259) does not")

    def parse_float(text: str) -> float:
        # Floats that Python and RFC 8785 write differently (see is_canonical), noted as
        # the C parser meets them.
        nonlocal tricky
        value = float(text)
        if not math.isfinite(value):
            raise BadRequestError(f"the JWS payload holds {text[:20]}, too large for a number")
        if value.is_integer() or "e" in text or "E" in text:
            tricky = True
        return value

    raw = token.encode() if isinstance(token, str) else token
    raw = raw.strip()
    if len(raw) > MAX_JWS_BYTES:
        raise BadRequestError(f"the report is larger than {MAX_JWS_BYTES} bytes")
    if raw.count(b".") != 2:
        raise BadRequestError("not a compact JWS: expected three base64url parts and two dots")
    try:
        obj = jws.extract_compact(raw)
    except (JoseError, ValueError, binascii.Error) as exc:
        raise BadRequestError(f"not a compact JWS: {exc}") from None
    header = obj.protected
    if header.get("alg") not in ALGORITHMS:
        raise BadRequestError(f'the JWS "alg" must be one of {", ".join(ALGORITHMS)}')
    if not isinstance(header.get("kid"), str):
        raise BadRequestError('the JWS header has no "kid" (the shop id)')
    try:
        payload = json.loads(obj.payload, parse_float=parse_float, parse_constant=parse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadRequestError("the JWS payload is not JSON") from None
    if not isinstance(payload, dict):
        raise BadRequestError("the JWS payload is not a JSON object")
    return obj, payload, tricky


# Bytes that start UTF-8 sequences for U+E000 and above: where sorting keys by code point
# (Python) and by UTF-16 code unit (RFC 8785) can differ.
_HIGH_UTF8 = re.compile(rb"[\xee-\xf4]")


def is_canonical(payload: Any, raw: bytes, tricky: bool | None = None) -> bool:
    """Return whether `raw` is the RFC 8785 serialisation of `payload` (parsed from it).

    rfc8785 is pure Python: 2.1 ms for an 8 KB report, most of an ingest's CPU. The C
    encoder gives the same bytes (sorted keys, no spaces, the same string escapes) except
    for floats that are integral or in exponent form and for keys beyond U+E000; those, and
    anything that differs, are decided by rfc8785 itself. Measured: 0.12 ms per report.
    """
    try:
        fast = _COMPACT.encode(payload).encode("utf-8")
    except (UnicodeEncodeError, ValueError):
        return _jcs_equal(payload, raw)
    if tricky is None:
        tricky = _tricky_floats(payload)
    if fast != raw or tricky or (not raw.isascii() and _HIGH_UTF8.search(raw)):
        return _jcs_equal(payload, raw)
    return True


def _jcs_equal(payload: Any, raw: bytes) -> bool:
    try:
        return bool(rfc8785.dumps(payload) == raw)
    except rfc8785.CanonicalizationError:  # integers beyond 2**53, lone surrogates
        return False


_COMPACT = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _tricky_floats(value: Any) -> bool:
    """Return whether a float is written differently by Python and by RFC 8785."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if item.is_integer() or "e" in repr(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _check_shape(payload: dict[str, Any], raw_payload: bytes, tricky: bool) -> tuple[int, Any, Any]:
    if payload.get("type") != REPORT_TYPE:
        raise BadRequestError(f'the report\'s "type" must be "{REPORT_TYPE}"')
    # The contract signs the RFC 8785 form; refusing any other keeps every stored report in
    # the one byte form that every hub recomputes alike.
    if not is_canonical(payload, raw_payload, tricky):
        raise BadRequestError("the JWS payload is not the report's RFC 8785 canonical JSON")
    live, okw = payload.get("live"), payload.get("okw")
    if not isinstance(live, dict) or not isinstance(okw, dict):
        raise BadRequestError('the report needs the objects "okw" and "live"')
    sequence = live.get("sequence")
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 0:
        raise BadRequestError("live.sequence must be a non-negative integer")
    if sequence > 2**53:  # JSON's safe integers (RFC 8785 refuses larger ones)
        raise BadRequestError("live.sequence is out of range")
    return sequence, live.get("issuedAt"), live.get("expiresAt")


def verify(token: str | bytes) -> VerifiedReport:
    """Check the form (400), `kid` and signature against the report's own key (401)."""
    obj, payload, tricky = _parse(token)
    sequence, issued, expires = _check_shape(payload, obj.payload, tricky)
    public = _public_key(payload.get("key"))[0]
    key, print_ = _import(public["x"])
    kid = obj.protected["kid"]
    if print_ != kid:  # thumbprint(public), of the key imported already
        raise NotAuthenticatedError(
            'the JWS "kid" is not the RFC 7638 thumbprint of the report\'s "key"'
        )
    if payload.get("shop_id") != kid:
        raise NotAuthenticatedError('the report\'s "shop_id" is not the JWS "kid"')
    try:
        text = (token if isinstance(token, str) else token.decode()).strip()
    except UnicodeDecodeError:  # only the signature part is left undecoded by the parse
        raise BadRequestError("not a compact JWS: it is not UTF-8 text") from None
    # The JWS as parsed once above (the signing input is its own header and payload bytes),
    # checked by joserfc against the registry of the two names and verified with the key.
    try:
        if obj.protected["alg"] == "EdDSA":
            with warnings.catch_warnings():
                # "EdDSA is deprecated via RFC 9864": the contract still accepts it.
                warnings.filterwarnings("ignore", message="EdDSA is deprecated")
                valid = jws.validate_compact(obj, key, registry=_REGISTRY)
        else:
            valid = jws.validate_compact(obj, key, registry=_REGISTRY)
    except JoseError:
        raise NotAuthenticatedError("the report's signature does not verify") from None
    if not valid:
        raise NotAuthenticatedError("the report's signature does not verify")
    return VerifiedReport(
        jws=text,
        shop_id=kid,
        public_jwk=public,
        sequence=sequence,
        issued_at=_timestamp(issued, "issuedAt"),
        expires_at=_timestamp(expires, "expiresAt"),
        payload=payload,
    )


def check_times(report: VerifiedReport, *, now: dt.datetime, clock_skew_s: int) -> None:
    """Refuse an expired report, or one issued in the future beyond the skew (422)."""
    skew = dt.timedelta(seconds=clock_skew_s)
    if report.expires_at <= now:
        raise InvalidInputError(
            f"the report expired at {report.expires_at.isoformat()} (now {now.isoformat()})",
            reason="expired",
        )
    if report.issued_at > now + skew:
        raise InvalidInputError(
            f"the report is issued at {report.issued_at.isoformat()}, more than "
            f"{clock_skew_s} s ahead of this hub's clock ({now.isoformat()})",
            reason="future",
        )
    if report.expires_at <= report.issued_at:
        raise InvalidInputError("the report expires before it is issued", reason="expired")
