"""How the daemon talks to the API server: one rate limiter (client-go's token bucket), one
retry policy (429/5xx/no answer only, jittered backoff, ``Retry-After`` honoured) and JSON
requests through the official client's ``ApiClient`` (its connection pool and credentials).

Bodies are sent and read as plain JSON dicts, never through the client's generated models,
which refuse fields they do not know (a newer API server's, a CRD's) and cost far more CPU
than the watch cache can spend.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import urllib3

from slurm_k8s_bridge.kube.errors import KubeApiError


USER_AGENT = "slurm-k8s-bridge/0.1"


class TokenBucket:
    """client-go's rate limiter: ``burst`` requests at once, then ``rate`` per second.

    ``acquire`` takes a token, waiting for it when the bucket is empty; waiting callers
    reserve their token first (the count may go negative), so concurrent callers are served
    in order and the long-run rate never exceeds ``rate``.
    """

    def __init__(self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be positive, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now

    def reserve(self) -> float:
        """Take a token now; returns the seconds to wait before using it."""
        with self._lock:
            self._refill()
            self._tokens -= 1.0
            return 0.0 if self._tokens >= 0 else -self._tokens / self.rate

    def try_acquire(self) -> bool:
        """Take a token if one is there now, without waiting."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def acquire(self) -> float:
        """Take a token, waiting as long as needed; returns the seconds waited."""
        delay = self.reserve()
        if delay > 0:
            self._sleep(delay)
        return delay

    @property
    def tokens(self) -> float:
        with self._lock:
            self._refill()
            return self._tokens


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a request is retried (429, 5xx, no answer)."""

    attempts: int = 5
    initial_wait: float = 0.2
    max_wait: float = 10.0
    #: (connect, read) seconds for one request
    request_timeout: tuple[float, float] = (10.0, 60.0)

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before attempt ``attempt + 1``: full-jitter exponential, at least what
        the server asked for in Retry-After (both capped at ``max_wait``)."""
        ceiling = min(self.max_wait, self.initial_wait * (2 ** max(0, attempt - 1)))
        delay = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_wait))
        return delay


RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})


def is_retryable(exc: BaseException) -> bool:
    """429, 5xx and requests that got no answer; never any other 4xx (409 is handled by the
    caller as "already exists", not retried)."""
    if isinstance(exc, KubeApiError):
        return exc.status is None or exc.status == 429 or exc.status >= 500
    return False


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]


class _Http:
    """JSON requests through the official client's request pipeline: ``ApiClient.param_serialize``
    (the query, the credentials -- ``update_params_for_auth``, token refresh included -- and the
    host) and ``ApiClient.call_api`` (its REST client: connection pool, TLS, proxy), exactly as
    its generated API classes call them, minus their models.

    The client's ``Watch`` helper is not used for watches: with raw events
    (``deserialize=False``) it does not follow the resourceVersion and fails on an ``ERROR``
    event, and a read blocked in it cannot be interrupted; ``kube.cache`` streams the same
    request itself.
    """

    def __init__(self, api_client: Any) -> None:
        self.api_client = api_client
        self.configuration = api_client.configuration

    def open(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
             body: Any = None, timeout: tuple[float, float]) -> Any:
        """Send one request; the urllib3 response, unread. Raises ``KubeApiError`` with the
        status for any non-2xx answer, with ``status`` None when no answer came."""
        from kubernetes.client.exceptions import ApiException

        params = [(k, _query_value(v)) for k, v in (query or {}).items() if v is not None]
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            method, url, headers, body, _ = self.api_client.param_serialize(
                method, path, query_params=params, header_params=headers, body=body,
                auth_settings=list(self.configuration.auth_settings() or {}))
            headers["User-Agent"] = USER_AGENT
            reply = self.api_client.call_api(method, url, header_params=headers, body=body,
                                             _request_timeout=timeout)
        except ApiException as exc:   # status 0: the TLS handshake failed
            raise KubeApiError(method, path, "", exc.status or None,
                               f"no answer ({exc.reason})") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(method, path, "", None, f"no answer ({type(exc).__name__}: {exc})") from exc
        resp = reply.response
        if not 200 <= resp.status <= 299:
            try:
                raw = resp.data
            except (urllib3.exceptions.HTTPError, OSError):
                raw = b""
            finally:
                resp.release_conn()
            raise _status_error(method, path, resp.status, raw, resp.headers.get("Retry-After"))
        return resp

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, timeout: tuple[float, float]) -> _Reply:
        resp = self.open(method, path, query=query, body=body, timeout=timeout)
        try:
            raw = resp.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeApiError(method, path, "", None, f"answer cut ({type(exc).__name__}: {exc})") from exc
        finally:
            resp.release_conn()
        return _Reply(resp.status, _json_object(raw))


def _query_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _json_object(raw: bytes | None) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {"message": raw[:500].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"items": data}


def _status_error(method: str, path: str, status: int, raw: bytes | None,
                  retry_after: str | None) -> KubeApiError:
    body = _json_object(raw)
    reason = str(body.get("message") or body.get("reason") or "")
    after = None
    if retry_after:
        try:
            after = float(retry_after)
        except ValueError:
            after = None
    return KubeApiError(method, path, "", status, reason, retry_after=after)


def _backoff(failures: int) -> float:
    return random.uniform(0.5, 1.0) * min(30.0, 0.5 * float(2 ** min(failures, 10)))
