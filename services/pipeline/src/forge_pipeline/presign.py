"""Presigned S3 GET URLs (AWS Signature V4, query-string form) without botocore.

A run tree can hold a thousand steps with logs; botocore's ``generate_presigned_url`` costs
about 0.15 ms per URL, this about 6 us: the signing key is derived once per day, each URL is
one SHA-256 and one HMAC. Path-style addressing, like forge_common.s3.

URLs are signed for the address clients use (``FORGE_S3_PUBLIC_URL`` when set, else
``FORGE_S3_URL``): SigV4 signs the host, so a URL cannot be re-pointed after signing. With
temporary credentials the session token travels in ``X-Amz-Security-Token``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import time
from urllib.parse import quote, urlsplit

__all__ = ["Presigner"]


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


class Presigner:
    def __init__(
        self,
        endpoint_url: str | None,
        bucket: str,
        access_key: str,
        secret_key: str,
        region: str,
        session_token: str = "",
    ) -> None:
        endpoint = (endpoint_url or f"https://s3.{region}.amazonaws.com").rstrip("/")
        parts = urlsplit(endpoint)
        self._base = f"{parts.scheme}://{parts.netloc}"
        self._host = parts.netloc
        self._prefix = parts.path.rstrip("/")
        self.bucket = bucket
        self._access_key = access_key
        self._secret_key = secret_key
        self._region = region
        self._session_token = session_token
        self._keys: dict[str, bytes] = {}
        self._shared: _Batch | None = None

    def _signing_key(self, datestamp: str) -> bytes:
        key = self._keys.get(datestamp)
        if key is None:
            k = _hmac(("AWS4" + self._secret_key).encode(), datestamp)
            k = _hmac(k, self._region)
            k = _hmac(k, "s3")
            key = _hmac(k, "aws4_request")
            self._keys = {datestamp: key}
        return key

    def batch(self, expires_in: int, now: dt.datetime | None = None) -> _Batch:
        """A signer for many URLs sharing one timestamp (one response's worth)."""
        return _Batch(self, expires_in, now or dt.datetime.now(dt.UTC))

    def shared(self, expires_in: int) -> _Batch:
        """A memoising signer whose timestamp steps every ``window`` seconds: a tree polled
        again and again gets its URLs from memory. Each URL stays valid for at least
        ``expires_in - window`` seconds (window: 5 minutes, or a quarter of a short TTL)."""
        window = max(1, min(300, expires_in // 4))
        start = int(time.time()) // window * window
        batch = self._shared
        if batch is None or batch.start != start or batch.expires_in != expires_in:
            batch = _Batch(self, expires_in, dt.datetime.fromtimestamp(start, dt.UTC), memo=True)
            self._shared = batch
        return batch

    def url(self, key: str, expires_in: int, now: dt.datetime | None = None) -> str:
        return self.batch(expires_in, now).url(key)


class _Batch:
    _MEMO_LIMIT = 50_000

    def __init__(self, owner: Presigner, expires_in: int, now: dt.datetime, memo: bool = False) -> None:
        self.start = int(now.timestamp())
        self.expires_in = expires_in
        self._memo: dict[str, str] | None = {} if memo else None
        amz_date = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        datestamp = amz_date[:8]
        scope = f"{datestamp}/{owner._region}/s3/aws4_request"
        credential = quote(f"{owner._access_key}/{scope}", safe="-_.~")
        token = ""
        if owner._session_token:
            token = "&X-Amz-Security-Token=" + quote(owner._session_token, safe="-_.~")
        # Sorted by parameter name, as SigV4's canonical query string requires.
        self._query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={credential}"
            f"&X-Amz-Date={amz_date}"
            f"&X-Amz-Expires={int(expires_in)}"
            f"{token}"
            "&X-Amz-SignedHeaders=host"
        )
        self._sts_head = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n"
        self._key = owner._signing_key(datestamp)
        self._owner = owner
        self._path_head = f"{owner._prefix}/{quote(owner.bucket, safe='-_.~')}/"
        self._canon_tail = f"\nhost:{owner._host}\n\nhost\nUNSIGNED-PAYLOAD"

    def url(self, key: str) -> str:
        memo = self._memo
        if memo is not None:
            found = memo.get(key)
            if found is None:
                if len(memo) >= self._MEMO_LIMIT:
                    memo.clear()
                found = memo[key] = self._sign(key)
            return found
        return self._sign(key)

    def _sign(self, key: str) -> str:
        path = self._path_head + quote(key, safe="/-_.~")
        canonical = f"GET\n{path}\n{self._query}{self._canon_tail}"
        sts = self._sts_head + hashlib.sha256(canonical.encode()).hexdigest()
        signature = hmac.new(self._key, sts.encode(), hashlib.sha256).hexdigest()
        return f"{self._owner._base}{path}?{self._query}&X-Amz-Signature={signature}"
