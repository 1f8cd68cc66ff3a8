"""Request-scoped dependencies: the app's services and the authenticated caller.

A caller is authenticated by ``Authorization: Bearer <key>`` or, when that header is
absent, by the dashboard's session cookie. A cookie-authenticated request that changes
something (POST, PUT, PATCH, DELETE) must also carry ``X-CSRF-Token`` (the session's
token) and, when it sends ``Origin``, come from this server's own origin: a browser adds
the cookie to any request it makes to us, the token only to ours.
"""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request

from sophon.errors import Forbidden, SophonError
from sophon.services import Services
from sophon.users import WEB_COOKIE, Principal

COOKIE = WEB_COOKIE
CSRF_HEADER = "X-CSRF-Token"
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS = {"http": 80, "https": 443}


class CsrfFailed(SophonError):
    status = 403
    code = "csrf_failed"


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname.lower(), port


def check_origin(request: Request) -> None:
    """Refuse a request whose ``Origin`` (when sent) is not this server, as the browser
    reached it: the same host and port as the ``Host`` header. (The scheme is not
    compared: behind a TLS proxy the browser says https while we hear http.)"""
    origin = request.headers.get("origin")
    if origin is None:
        return
    parts = urlsplit(origin)
    scheme = parts.scheme.lower()
    host = request.headers.get("host", "")
    forwarding = getattr(request.app.state.services, "forwarding", None)
    if forwarding is not None and forwarding.forwarded(request.scope):
        # Sent on by the node the browser reached (cluster/forward.py): its Host.
        host = request.headers.get("x-forwarded-host", host)
    ours = _host_port(host, scheme)
    theirs = _host_port(parts.netloc, scheme) if scheme in _DEFAULT_PORTS else None
    if theirs is None or theirs != ours:
        raise CsrfFailed(f"cross-site request refused: Origin {origin[:200]!r} is not this "
                         "server")


async def _cookie_principal(request: Request, cookie: str) -> Principal:
    unsafe = request.method in UNSAFE_METHODS
    if unsafe:
        check_origin(request)
    principal, csrf_token = await services(request).users.web_session(cookie)
    if unsafe:
        sent = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), csrf_token.encode()):
            raise CsrfFailed(f"missing or wrong {CSRF_HEADER} header: a request signed in "
                             "by cookie that changes something must send the csrf_token "
                             "from /v1/auth/session")
    return principal


async def principal(request: Request) -> Principal:
    header = request.headers.get("authorization")
    cookie = request.cookies.get(COOKIE)
    if header is None and cookie:
        return await _cookie_principal(request, cookie)
    scheme, _, key = (header or "").partition(" ")
    token = key.strip() if scheme.lower() == "bearer" else None
    return await services(request).users.authenticate(token)


ServicesDep = Annotated[Services, Depends(services)]
PrincipalDep = Annotated[Principal, Depends(principal)]


async def admin(request: Request, caller: PrincipalDep) -> Principal:
    """The caller, who must be one of ``SOPHON_ADMIN_USERS`` (a dependency on the key,
    so the API's description says the route needs one)."""
    if caller.name not in services(request).settings.admin_users:
        raise Forbidden(f"only an admin may read {request.url.path} (SOPHON_ADMIN_USERS "
                        "names them)")
    return caller


AdminDep = Annotated[Principal, Depends(admin)]
