"""Who may read the ledger: a signed-in staff user, or whoever holds the local API token.

The token lives in $TOKENPAK_HOME/api_token (0600, made on first use; `tokenpak token` prints
it), so only the account that runs TokenPak can read it. Scripts send it as
`Authorization: Bearer …`. A browser signs in with it once: that logs in the built-in user
`local` (a superuser without a password), so the dashboard and the admin both open. Making a
new token (`tokenpak token --rotate`) also gives `local` a new password hash, which ends every
session signed in with the old token: Django checks that hash on each request.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model, login
from django.contrib.auth.models import User
from django.http import HttpRequest

from telemetry.models import SignInFailure
from tokenpak_site import conf

LOCAL_USER = "local"
# Failed password sign-ins allowed from one address in a window, against guessing a user's
# password. Token attempts are neither counted nor refused: 256 random bits cannot be guessed,
# and any web page can make a browser send a wrong one. Counted in the database, so every
# worker process sees the same count.
SIGN_IN_LIMIT = 10
SIGN_IN_WINDOW = 300.0


def token_path() -> Path:
    return Path(settings.TOKENPAK_HOME) / "api_token"


def token() -> str:
    conf.ensure_home(Path(settings.TOKENPAK_HOME))
    return conf.kept_secret(token_path())


def rotate() -> str:
    conf.ensure_home(Path(settings.TOKENPAK_HOME))
    new = conf.kept_secret(token_path(), renew=True)
    user = get_user_model().objects.filter(username=LOCAL_USER).first()
    if user is not None:
        user.set_unusable_password()  # a new hash: the old token's sessions end
        user.save(update_fields=["password"])
    return new


_read: tuple[tuple[str, int, int, int], str] = ("", 0, 0, 0), ""


def current_token() -> str:
    """The token as its file holds it now; "" when none has been made. Never makes one.

    Read on every call that needs it (the proxy's X-TokenPak-Token check, sign-ins), with one
    stat: the text is re-read only when the file changed, and `token --rotate` renames a new
    file over the old, so a rotation counts from the next request, in every process."""
    global _read
    path = token_path()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return ""
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if _read[0] != key:
        try:
            _read = key, path.read_text().strip()
        except FileNotFoundError:
            return ""
    return _read[1]


def token_matches(given: str) -> bool:
    """given is the token, compared in constant time; never true while no token exists."""
    value = current_token()
    if not given or not value:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), value.encode())


def bearer(request: HttpRequest) -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def staff(request: HttpRequest) -> bool:
    user = getattr(request, "user", None)
    return bool(user and user.is_active and user.is_staff)


def allowed(request: HttpRequest) -> bool:
    return staff(request) or token_matches(bearer(request))


def _address(request: HttpRequest) -> str:
    return str(request.META.get("REMOTE_ADDR", ""))[:64]


def sign_in_wait(request: HttpRequest) -> int:
    """Seconds this address must wait before trying to sign in again; 0: go ahead."""
    now = time.time()
    recent = list(SignInFailure.objects.filter(
        address=_address(request), at__gt=now - SIGN_IN_WINDOW).order_by("-at")
        .values_list("at", flat=True)[:SIGN_IN_LIMIT])
    if len(recent) < SIGN_IN_LIMIT:
        return 0
    return max(1, math.ceil(recent[-1] + SIGN_IN_WINDOW - now))


def too_many(wait: int) -> str:
    return f"Too many failed sign-ins from this address: try again in {wait} s."


def note_sign_in(request: HttpRequest, ok: bool) -> None:
    """Count a failure (and forget expired ones), or clear the address's count on success."""
    failures = SignInFailure.objects.filter(address=_address(request))
    if ok:
        failures.delete()
        return
    now = time.time()
    SignInFailure.objects.filter(at__lt=now - SIGN_IN_WINDOW).delete()
    SignInFailure.objects.create(address=_address(request), at=now)


def sign_in(request: HttpRequest, given: str) -> bool:
    """Log the browser in as `local` when given is the token."""
    if not token_matches(given.strip()):
        return False
    login(request, local_user(), backend="django.contrib.auth.backends.ModelBackend")
    return True


def local_user() -> User:
    user, created = get_user_model().objects.get_or_create(
        username=LOCAL_USER, defaults={"is_staff": True, "is_superuser": True}
    )
    if created:
        user.set_unusable_password()
        user.save(update_fields=["password"])
    return user


def sign_in_url(value: str) -> str:
    """The link that signs a browser in: what `make run` and `token --url` print."""
    base = f"http://{settings.URL_HOST}:{settings.TOKENPAK_PORT}"
    return f"{base}/dashboard/login/?token={value}"
