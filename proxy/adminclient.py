"""A small client of the admin API, for the CLI.

Every failure becomes one :class:`AdminClientError` with a sentence a
person can act on: the address could not be reached, the token was
refused, or the proxy rejected a value (its own message, quoted).
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from proxy.errors import MaitredError

_TIMEOUT = 5.0


class AdminClientError(MaitredError):
    """The admin API could not be used; ``rejected`` for a refused value."""

    def __init__(self, message: str, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected


class AdminClient:
    def __init__(self, url: str, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def get(self, path: str) -> Any:
        return self._call("GET", path)

    def get_text(self, path: str) -> str:
        return self._call("GET", path, decode=False)

    def patch(self, path: str, payload: dict) -> Any:
        return self._call("PATCH", path, payload)

    def post(self, path: str) -> Any:
        return self._call("POST", path, {})

    def _call(self, method: str, path: str, payload: dict | None = None,
              decode: bool = True) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(self.url + path, data=data,
                                         method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            raise self._refusal(err) from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise AdminClientError(
                f"cannot reach the admin API at {self.url}: {reason}"
            ) from None
        except http.client.HTTPException:
            raise AdminClientError(
                f"{self.url}{path} did not answer HTTP; is this maitred's "
                "admin address?"
            ) from None
        if not decode:
            return body.decode("utf-8", "replace")
        try:
            return json.loads(body)
        except ValueError:
            raise AdminClientError(
                f"{self.url}{path} did not answer JSON; is this maitred's "
                "admin address?"
            ) from None

    def _refusal(self, err: urllib.error.HTTPError) -> AdminClientError:
        try:
            message = json.loads(err.read())["error"]
        except (ValueError, KeyError, TypeError):
            message = err.reason
        if err.code == 401:
            return AdminClientError(
                f"the admin API at {self.url} refused the token: {message}"
            )
        return AdminClientError(
            f"the admin API rejected the request ({err.code}): {message}",
            rejected=err.code == 400,
        )
