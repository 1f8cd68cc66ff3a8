"""Browser sign-in for the dashboard: an API key (or a one-time link) becomes an
HttpOnly, SameSite=Strict session cookie; the key itself never reaches the page's storage.

The cookie authenticates every /v1 route (see ``deps.principal``); the ``csrf_token``
returned here must come back as ``X-CSRF-Token`` on every request that changes something.
"""

from __future__ import annotations

import html

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from sophon.api.deps import COOKIE, ServicesDep, check_origin
from sophon.api.openapi import errors
from sophon.errors import NotFound, Unauthorized
from sophon.users import WEB_SESSION_TTL, LinkGone, WebSignIn

router = APIRouter(prefix="/v1/auth", tags=["auth"])

NO_STORE = {"Cache-Control": "no-store"}


def _cookie_header(max_age: str) -> dict[str, object]:
    return {"Set-Cookie": {
        "description": f"`{COOKIE}=...; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age}`"
                       " (`Secure` over https)",
        "schema": {"type": "string"}}}


SET_COOKIE = _cookie_header("604800")
HTML_PAGE = {"text/html": {"schema": {"type": "string"}}}


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    api_key: str = Field(min_length=1, max_length=512,
                         description="An API key, from `sophon users add NAME`.")


class SignedIn(BaseModel):
    user: str = Field(description="The signed-in user's name.")
    csrf_token: str = Field(description="Send it back as `X-CSRF-Token` on every POST, "
                                        "PUT, PATCH and DELETE made with the cookie.")


def _set_cookie(request: Request, response: Response, value: str, max_age: int) -> None:
    # Written out (not Response.set_cookie) for the exact attributes the contract names.
    secure = "; Secure" if request.url.scheme == "https" else ""
    response.headers.append("set-cookie", f"{COOKIE}={value}; HttpOnly; SameSite=Strict; "
                                          f"Path=/; Max-Age={max_age}{secure}")


def _sign_in_cookie(request: Request, response: Response, signed_in: WebSignIn) -> None:
    _set_cookie(request, response, signed_in.cookie, int(WEB_SESSION_TTL.total_seconds()))


@router.post("/session", response_model=SignedIn, responses={
    200: {"description": "Signed in: the cookie is set", "headers": SET_COOKIE},
    **errors((401, "That API key is not valid (`unauthorized`)."),
             (403, "The request came from another site's page (`csrf_failed`)."))})
async def sign_in(body: SignIn, request: Request, response: Response,
                  services: ServicesDep) -> SignedIn:
    """Sign in with an API key: sets the session cookie (valid 7 days)."""
    check_origin(request)  # a login from another site's page would sign the victim in
    signed_in = await services.users.sign_in(body.api_key)
    _sign_in_cookie(request, response, signed_in)
    response.headers.update(NO_STORE)
    return SignedIn(user=signed_in.principal.name, csrf_token=signed_in.csrf_token)


@router.get("/session", response_model=SignedIn, responses=errors(
    (401, "No session cookie, or one that has ended (`unauthorized`).")))
async def current(request: Request, response: Response, services: ServicesDep) -> SignedIn:
    """Who the session cookie signs in, and its CSRF token."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        raise Unauthorized("not signed in: sign in with an API key")
    principal, csrf_token = await services.users.web_session(cookie)
    response.headers.update(NO_STORE)
    return SignedIn(user=principal.name, csrf_token=csrf_token)


@router.delete("/session", status_code=204, responses={
    204: {"description": "Signed out (also when there was no session): the cookie is "
                         "cleared", "headers": _cookie_header("0")}})
async def sign_out(request: Request, services: ServicesDep) -> Response:
    """Sign out: the session ends on the server and the cookie is cleared."""
    cookie = request.cookies.get(COOKIE)
    if cookie:
        await services.users.sign_out(cookie)
    response = Response(status_code=204, headers=NO_STORE)
    _set_cookie(request, response, "", 0)
    return response


def _page(status: int, title: str, text: str) -> HTMLResponse:
    body = (f"<!doctype html><html lang=en><meta charset=utf-8><title>Sophon: {title}"
            f"</title><body style='font:16px system-ui;max-width:40em;margin:4em auto'>"
            f"<h1>{title}</h1><p>{html.escape(text)}</p><p>Ask for a new link "
            "(<code>sophon users sign-in-link NAME</code>), or <a href='/'>sign in with an "
            "API key</a>.</p></body></html>")
    return HTMLResponse(body, status, headers={**NO_STORE, "Referrer-Policy": "no-referrer"})


@router.get("/link/{token}", status_code=303, response_class=RedirectResponse, responses={
    303: {"description": "Signed in: the cookie is set and the browser goes to `/`",
          "headers": {**SET_COOKIE, "Location": {"schema": {"type": "string"}}}},
    404: {"description": "No such sign-in link (an HTML page; JSON `not_found` for a "
                         "token with a `/` in it, which is no route)",
          "content": {**HTML_PAGE, **errors(404)[404]["content"]}},
    410: {"description": "The link was used already or has expired (an HTML page)",
          "content": HTML_PAGE}})
async def use_link(token: str, request: Request, services: ServicesDep) -> Response:
    """Sign in with a one-time link from `sophon users sign-in-link NAME` (valid once,
    for 15 minutes)."""
    try:
        signed_in = await services.users.sign_in_with_link(token)
    except NotFound as exc:
        return _page(404, "Unknown sign-in link", exc.message)
    except LinkGone as exc:
        return _page(410, "This sign-in link no longer works", exc.message)
    response = RedirectResponse("/", 303, headers={**NO_STORE,
                                                   "Referrer-Policy": "no-referrer"})
    _sign_in_cookie(request, response, signed_in)
    return response
