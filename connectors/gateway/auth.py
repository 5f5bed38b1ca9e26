"""Who may talk to the gateway: the publish token (where it comes from, how it is handed
over, how it is checked), the loopback test, and the browser-origin allow-list
(docs/gateway-protocol.md "Security").

The token never travels on a command line (any local user reads /proc/PID/cmdline) or in a
page. Its sources, first found wins:
  1. an explicit value (a constructor argument; `volgraph run` hands its per-run token to its
     children through the environment variable PUBLISH_TOKEN_ENV);
  2. $VOLGRAPH_PUBLISH_TOKEN;
  3. a file: --publish-token-file / $VOLGRAPH_PUBLISH_TOKEN_FILE / graph.toml
     sinks.gateway.publish_token_file (e.g. a mounted Kubernetes Secret);
  4. for a loopback gateway given none of these: a token it generates and writes to a cookie
     file readable by its own user only (cookie_path(port), like a database's cookie auth), which
     a publisher on the same machine and user reads when it has no token of its own.
A gateway bound off loopback with no token from 1-3 refuses to start.

Pure policy plus small file reads/writes; no sockets; never imports flows or the server.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Optional
from urllib.parse import parse_qs, urlsplit

PUBLISH_TOKEN_ENV = "VOLGRAPH_PUBLISH_TOKEN"
PUBLISH_TOKEN_FILE_ENV = "VOLGRAPH_PUBLISH_TOKEN_FILE"
RUN_DIR_ENV = "VOLGRAPH_RUN_DIR"  # where loopback gateways keep their cookie files
TOKEN_BYTES = 32
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class TokenError(ValueError):
    """No usable token; the message names the setting and the fix."""


def new_publish_token() -> str:
    """A fresh random token (256 bits, URL-safe). `volgraph run` makes one per run and hands it
    to the gateway and the flow as os.environ[PUBLISH_TOKEN_ENV]."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_token_file(path: str | os.PathLike, what: str = "--publish-token-file") -> str:
    """The token in a file (surrounding whitespace stripped); TokenError naming the file."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TokenError(f"{what} {path}: cannot read it ({exc.strerror}); give a readable file holding the token") from None
    except UnicodeError:
        raise TokenError(f"{what} {path}: not UTF-8 text; the file must hold the token alone") from None
    if not token:
        raise TokenError(f"{what} {path} is empty; write the token into it (e.g. from new_publish_token())")
    return token


def configured_token(explicit: Optional[str] = None, token_file: Optional[str] = None,
                     environ: Optional[dict] = None) -> Optional[str]:
    """The token from sources 1-3 above, or None. An explicit "" counts as not given."""
    env = os.environ if environ is None else environ
    if explicit:
        return explicit
    if env.get(PUBLISH_TOKEN_ENV):
        return env[PUBLISH_TOKEN_ENV]
    if env.get(PUBLISH_TOKEN_FILE_ENV):
        return read_token_file(env[PUBLISH_TOKEN_FILE_ENV], f"${PUBLISH_TOKEN_FILE_ENV}")
    if token_file:
        return read_token_file(token_file, "publish_token_file")
    return None


def is_loopback(host: str) -> bool:
    """True for a bind/connect address that only this machine reaches."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------- cookie files (loopback only)


def run_dir() -> Path:
    """$VOLGRAPH_RUN_DIR, else $XDG_RUNTIME_DIR/volgraph, else <tmp>/volgraph-<uid>."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if os.environ.get("XDG_RUNTIME_DIR"):
        return Path(os.environ["XDG_RUNTIME_DIR"]) / "volgraph"
    return Path(tempfile.gettempdir()) / f"volgraph-{os.getuid()}"


def cookie_path(port: int) -> Path:
    return run_dir() / f"publish-token-{port}"


def _private_dir(path: Path) -> bool:
    """Create `path` 0700 if needed; True only if it is a real directory of ours that no one
    else can enter (never follow a symlink another user planted)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def write_cookie(port: int, token: str) -> Optional[Path]:
    """Write the token to cookie_path(port), mode 0600; None if no private place exists."""
    path = cookie_path(port)
    if not _private_dir(path.parent):
        return None
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
    except OSError:
        return None
    return path


def read_cookie(port: int) -> Optional[str]:
    """The token a loopback gateway on `port` wrote, if the file is ours and private."""
    path = cookie_path(port)
    try:
        if not _private_dir(path.parent):
            return None
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        return path.read_text(encoding="utf-8").strip() or None
    except (OSError, UnicodeError):
        return None


def remove_cookie(port: int, token: str) -> None:
    """Remove the cookie file if it still holds `token` (a newer gateway's is left alone)."""
    if read_cookie(port) == token:
        try:
            cookie_path(port).unlink()
        except OSError:
            pass


def publisher_token(url: str, explicit: Optional[str] = None, token_file: Optional[str] = None) -> Optional[str]:
    """The token a publisher to `url` sends: sources 1-3, else `?token=` in the URL (deploy/'s
    Secret form), else the loopback gateway's cookie for the URL's port."""
    token = configured_token(explicit, token_file)
    if token:
        return token
    parts = urlsplit(url)
    in_url = (parse_qs(parts.query).get("token") or [""])[0]
    if in_url:
        return in_url
    if parts.hostname and is_loopback(parts.hostname) and parts.port:
        return read_cookie(parts.port)
    return None


def strip_token(url: str) -> str:
    """`url` without a ?token= parameter (the token goes in the Authorization header, not in
    request lines that proxies and logs keep)."""
    parts = urlsplit(url)
    if "token" not in parse_qs(parts.query):
        return url
    query = "&".join(p for p in parts.query.split("&") if not p.startswith("token="))
    return parts._replace(query=query).geturl()


# ---------------------------------------------------------------- handshake checks


def token_ok(authorization: Optional[str], query: str, token: str) -> bool:
    """The token from `Authorization: Bearer ...` or `?token=`, compared in constant time."""
    auth = authorization or ""
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    else:
        given = (parse_qs(query).get("token") or [""])[0]
    return hmac.compare_digest(given.encode(), token.encode())


def normalise_origin(origin: str) -> str:
    """scheme://host[:port], lower case, default ports dropped."""
    try:
        parts = urlsplit(origin.strip().rstrip("/"))
        port = parts.port
    except ValueError:  # "http://[", a port out of range, ...: matches nothing
        return origin
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def own_origins(host: str, port: int) -> set[str]:
    """The page's own origin as served by this gateway: http://<loopback name>:port for a
    loopback bind (127.0.0.1, localhost, [::1]), else http://<bound address>:port."""
    hosts = [h if ":" not in h else f"[{h}]" for h in LOOPBACK_NAMES] if is_loopback(host) else []
    if host not in ("0.0.0.0", "::", "") and not is_loopback(host):
        hosts.append(host if ":" not in host else f"[{host}]")
    return {normalise_origin(f"http://{h}:{port}") for h in hosts}


def origin_allowed(origin: Optional[str], allowed: Iterable[str]) -> bool:
    """No Origin (not a browser: nothing to hijack) or one in `allowed` (normalised). The Host
    header plays no part: a DNS-rebinding page sends its own name as Host and Origin alike."""
    if origin is None:
        return True
    return normalise_origin(origin) in allowed


__all__ = [
    "PUBLISH_TOKEN_ENV", "PUBLISH_TOKEN_FILE_ENV", "RUN_DIR_ENV", "TokenError", "configured_token", "cookie_path",
    "is_loopback", "new_publish_token", "normalise_origin", "origin_allowed", "own_origins", "publisher_token",
    "read_cookie", "read_token_file", "remove_cookie", "strip_token", "token_ok", "write_cookie",
]
