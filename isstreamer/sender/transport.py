"""HTTP to the events API over one keep-alive ``requests.Session``."""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from typing import Mapping, Optional

import requests

from .. import __version__
from ..options import DEFAULTS

ACCEPT_VERSION = "<=0.0.4"  # what ISStreamer 2.0.0 sends
USER_AGENT = "isstreamer/%s (PyStreamer-compatible; python-requests)" % __version__


@dataclass
class Answer:
    """What one request got: a status and headers, or the connection error that stopped it."""

    status: int  # 0 when no HTTP answer arrived
    headers: Mapping[str, str]
    text: str
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        """True for 2xx."""
        return 200 <= self.status < 300


class Transport:
    """Posts events and creates buckets; never raises for network trouble (see Answer.error)."""

    def __init__(
        self, api_base: str, access_key: str, timeout: float = DEFAULTS.request_timeout, use_gzip: bool = False
    ) -> None:
        self.api_base = api_base.rstrip("/")
        self.timeout = timeout
        self.use_gzip = use_gzip
        self.session = requests.Session()
        # Resolve proxies and CA bundle from the environment once, not on every request
        # (requests re-reads them per request when trust_env is on: ~8% of the sender's CPU).
        self.session.proxies.update(requests.utils.get_environ_proxies(self.api_base))
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            self.session.verify = bundle
        self.session.trust_env = False
        self.session.headers.update(
            {
                "Content-Type": "application/json",
                "Accept-Version": ACCEPT_VERSION,
                "User-Agent": USER_AGENT,
                "X-IS-AccessKey": access_key,
            }
        )

    def _post(self, path: str, body: bytes, headers: Mapping[str, str], timeout: Optional[float]) -> Answer:
        hdrs = dict(headers)
        if self.use_gzip and len(body) > 1024:
            body = gzip.compress(body, 5)
            hdrs["Content-Encoding"] = "gzip"
        try:
            r = self.session.post(
                self.api_base + path,
                data=body,
                headers=hdrs,
                timeout=self.timeout if timeout is None else min(self.timeout, max(0.05, timeout)),
            )
        except requests.RequestException as exc:
            return Answer(0, {}, "", "%s: %s" % (type(exc).__name__, _short(str(exc))))
        return Answer(r.status_code, r.headers, r.text[:2000])

    def post_events(self, bucket_key: str, body: bytes, timeout: Optional[float] = None) -> Answer:
        """POST a JSON array of events to ``/api/events`` for ``bucket_key``."""
        return self._post("/api/events", body, {"X-IS-BucketKey": bucket_key}, timeout)

    def create_bucket(self, bucket_key: str, bucket_name: str, timeout: Optional[float] = None) -> Answer:
        """POST ``/api/buckets``; 201 created and 204 already there are both success."""
        import orjson

        body = orjson.dumps({"bucketKey": bucket_key, "bucketName": bucket_name})
        return self._post("/api/buckets", body, {"X-IS-BucketKey": bucket_key}, timeout)

    def close(self) -> None:
        """Close the keep-alive connections."""
        self.session.close()


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
