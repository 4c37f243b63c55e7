"""Connexion's security handlers, minus a per-request cost.

Connexion decides on every request, with `inspect.signature`, whether each security
function accepts `required_scopes` and `request`: four signature inspections per Calls
request. These handlers decide once per function. Everything else is Connexion's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from connexion.exceptions import OAuthResponseProblem
from connexion.security import NO_VALUE, ApiKeySecurityHandler, BearerSecurityHandler


class _SignatureOnce:
    required_scopes_kw: str
    request_kw: str
    _accepts_kwarg: Callable[[Callable[..., Any], str], bool]

    def _generic_check(
        self, func: Callable[..., Any], exception_msg: str
    ) -> Callable[..., Awaitable[Any]]:
        accepts_scopes = self._accepts_kwarg(func, self.required_scopes_kw)
        accepts_request = self._accepts_kwarg(func, self.request_kw)

        async def wrapper(request: Any, *args: Any, required_scopes: Any = None) -> Any:
            kwargs: dict[str, Any] = {}
            if accepts_scopes:
                kwargs[self.required_scopes_kw] = required_scopes
            if accepts_request:
                kwargs[self.request_kw] = request
            token_info = func(*args, **kwargs)
            while asyncio.iscoroutine(token_info):
                token_info = await token_info
            if token_info is NO_VALUE:
                return NO_VALUE
            if token_info is None:
                raise OAuthResponseProblem(detail=exception_msg)
            return token_info

        return wrapper


class ApiKeyHandler(_SignatureOnce, ApiKeySecurityHandler):  # type: ignore[misc]
    """`type: apiKey` schemes."""


class BearerHandler(_SignatureOnce, BearerSecurityHandler):  # type: ignore[misc]
    """`type: http, scheme: bearer` schemes."""


SECURITY_MAP = {"apiKey": ApiKeyHandler, "bearer": BearerHandler}
