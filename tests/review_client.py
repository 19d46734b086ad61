"""A client of the review server as a browser uses it: opens the URL the server printed (with its
token), keeps the cookie it gets, sends the Origin of the page with each write."""

from __future__ import annotations

import http.cookiejar
import json
import urllib.request
from urllib.parse import urlsplit


class ReviewClient:
    def __init__(self, url: str, timeout: float = 20):
        parts = urlsplit(url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.base = self.origin + "/"
        self.timeout = timeout
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        self.page = self.get_raw(url)  # trades the token for the cookie

    def get_raw(self, url: str) -> bytes:
        with self.opener.open(url, timeout=self.timeout) as r:
            return r.read()

    def get(self, path: str) -> bytes:
        return self.get_raw(self.base + path)

    def json(self, path: str):
        return json.loads(self.get(path))

    def post(self, path: str, body, headers: dict | None = None) -> dict:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base + path, data, {"Content-Type": "application/json", "Origin": self.origin, **(headers or {})}
        )
        with self.opener.open(req, timeout=self.timeout) as r:
            return json.loads(r.read())
