"""The shop's identity: an Ed25519 key pair in the data directory, and signing with it.

The key is a private JWK in `<data_dir>/network/shop-key.jwk` (mode 0600), made on first
start. The shop's id is the RFC 7638 thumbprint of its public key (SHA-256, base64url).
Reports are signed as compact JWS with joserfc, whose registry (1.8) knows RFC 9864's fully
specified "Ed25519" algorithm name, so no algorithm is written by hand here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc import jws
from joserfc.jwk import OKPKey

log = logging.getLogger("microfactory.network")

KEY_FILE = Path("network") / "shop-key.jwk"
ALG = "Ed25519"  # RFC 9864; verifiers also accept the older "EdDSA"
VERIFY_ALGS = ("Ed25519", "EdDSA")
_lock = threading.Lock()


@dataclass(frozen=True)
class ShopKey:
    """The shop's signing key and the id derived from it."""

    key: OKPKey
    shop_id: str

    def public_jwk(self) -> dict[str, Any]:
        """Return the public key as a JWK (kty, crv, x only)."""
        public = self.key.as_dict(private=False)
        return {"kty": public["kty"], "crv": public["crv"], "x": public["x"]}

    def jwks(self) -> dict[str, Any]:
        """Return the public key as a JWKS, with its kid, use and alg."""
        return {"keys": [{**self.public_jwk(), "kid": self.shop_id, "use": "sig", "alg": ALG}]}

    def sign(self, payload: bytes) -> str:
        """Sign a payload as a compact JWS with the header {"alg": "Ed25519", "kid": shop_id}."""
        header = {"alg": ALG, "kid": self.shop_id}
        return jws.serialize_compact(header, payload, self.key, algorithms=[ALG])


def key_path(data_dir: Path) -> Path:
    """Return where the shop's private key is kept."""
    return data_dir / KEY_FILE


def _from_file(path: Path) -> ShopKey:
    data = json.loads(path.read_text(encoding="utf-8"))
    key = OKPKey.import_key(data)
    if key.curve_name != "Ed25519" or not key.is_private:
        raise ValueError(f"{path} does not hold a private Ed25519 key")
    return ShopKey(key=key, shop_id=key.thumbprint())


def load_or_create(data_dir: Path) -> ShopKey:
    """Return the shop's key, making it (mode 0600) if there is none yet."""
    path = key_path(data_dir)
    with _lock:
        if path.exists():
            return _from_file(path)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = OKPKey.generate_key("Ed25519", private=True)
        text = json.dumps(key.as_dict(private=True))
        try:
            # O_EXCL: another process making its key at the same moment wins, and both use it.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return _from_file(path)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        shop = ShopKey(key=key, shop_id=key.thumbprint())
        log.info("made the shop's network key; shop id %s", shop.shop_id)
        return shop


_cache: dict[Path, ShopKey] = {}


def shop_key(data_dir: Path) -> ShopKey:
    """Return the shop's key, read once per process (made on first use)."""
    found = _cache.get(data_dir)
    if found is None or not key_path(data_dir).exists():
        found = _cache[data_dir] = load_or_create(data_dir)
    return found
