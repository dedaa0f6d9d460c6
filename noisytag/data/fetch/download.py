"""A resumable, verified HTTP download of one file; it knows nothing of any data set.

``download_file(file, folder)`` writes ``folder/<name>.part`` and renames it to ``folder/<name>`` once
its checksum matches. The first request for a file is also its probe: it asks each of the file's URLs, best
first, for the bytes from ``<held>`` on (``Range: bytes=<held>-``), and keeps the first URL that answers
``206`` from that byte; a URL that answers ``200`` ignores ranges (Zenodo's API link does) and is used only
when no URL resumes, from byte 0, without hashing the ``.part`` it discards. A dropped connection continues
from the bytes received, on the URL the probe chose, under a :class:`RetryPolicy`: the retry count starts
over whenever an attempt received bytes, attempts that received none are capped, and the wait between
them honours the server's ``Retry-After`` and ``X-RateLimit-Reset``. :func:`get_json` asks an API under
the same policy.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path

from noisytag import __version__
from noisytag.fileio import write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 20
# No [project.urls] in pyproject.toml yet; Zenodo asks clients to name a contact page this way.
PROJECT_URL = "https://github.com/noisytag/noisytag"
USER_AGENT = f"noisytag/{__version__} (+{PROJECT_URL})"
NETWORK_ERRORS = (OSError, HTTPException)  # what a request can raise; HTTPError and timeouts included


class FetchError(RuntimeError):
    """A fetch step failed; the message is one line naming the file and what went wrong."""


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: its size, ``"<algorithm>:<hex>"`` checksum (None: unverified) and its URLs,
    best first (the first that resumes is used)."""

    name: str
    size: int
    checksum: str | None
    urls: tuple[str, ...]


class Progress:
    """What a download reports as it goes; the base class ignores it all (subclass it for a display)."""

    def advance(self, n: int) -> None:
        """``n`` more bytes received."""

    def restart(self) -> None:
        """The file starts over from byte 0 (the bytes held so far are discarded)."""

    def note(self, text: str) -> None:
        """Something worth showing beside the file's progress, e.g. that its server cannot resume."""


# ---------------------------------------------------------------- when to try again


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed request is tried again, and after how long.

    ``retries``: failed attempts in a row that are tried again. An attempt that received bytes starts the
    count over (a flaky link that keeps making progress never runs out); one that received none adds to
    it, so ``retries`` also caps the attempts without progress. The wait is ``wait`` doubled per attempt
    without progress, at most ``max_wait``, or longer when the server asks (``Retry-After``, or
    ``X-RateLimit-Reset`` on a 429); a server asking for more than ``max_hint`` seconds ends the attempts
    at once. ``sleep`` and ``clock`` are injectable so tests do not wait.
    """

    retries: int = 3
    wait: float = 2.0
    max_wait: float = 60.0
    max_hint: float = 900.0
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time

    def backoff(self, stalled: int) -> float:
        """The wait before the next attempt after ``stalled`` attempts in a row (counted as above)."""
        return min(self.max_wait, self.wait * 2 ** max(0, stalled - 1))


def server_wait(err: BaseException, now: float) -> float | None:
    """Seconds an HTTP error's server asks to wait, or None: ``Retry-After`` (seconds or an HTTP date),
    else on a 429 ``X-RateLimit-Reset`` (epoch seconds; a value too small for that is seconds from now)."""
    if not isinstance(err, urllib.error.HTTPError) or err.headers is None:
        return None
    after = (err.headers.get("Retry-After") or "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", after):
        return float(after)
    if after:
        with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
            return max(0.0, email.utils.parsedate_to_datetime(after).timestamp() - now)
    reset = (err.headers.get("X-RateLimit-Reset") or "").strip()
    if err.code == 429 and re.fullmatch(r"\d+(\.\d+)?", reset):
        return max(0.0, float(reset) - now if float(reset) > 1e9 else float(reset))
    return None


def retryable(err: BaseException) -> bool:
    """Network errors, timeouts, 408, 425, 429 and 5xx are tried again; other HTTP errors are final."""
    if isinstance(err, urllib.error.HTTPError):
        return err.code in (408, 425, 429) or err.code >= 500
    return isinstance(err, NETWORK_ERRORS)


def reason(err: BaseException) -> str:
    """One line for a network error (with the wait the server asks for, if any)."""
    if isinstance(err, urllib.error.HTTPError):
        hint = server_wait(err, time.time())
        return f"HTTP {err.code} {err.reason}" + (f", retry after {hint:.0f} s" if hint is not None else "")
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return " ".join(f"{type(err).__name__}: {err}".split()).rstrip(": ")


class Attempts:
    """The attempts of one request under a :class:`RetryPolicy` (see there for the rules)."""

    def __init__(self, policy: RetryPolicy, what: str):
        self.policy, self.what, self.stalled = policy, what, 0

    def retry(self, err: BaseException, progressed: bool = False) -> bool:
        """After a failed attempt: wait and return True to try again, or False to give up."""
        if not retryable(err):
            return False
        self.stalled = 1 if progressed else self.stalled + 1
        hint = server_wait(err, self.policy.clock())
        if self.stalled > self.policy.retries or (hint is not None and hint > self.policy.max_hint):
            return False
        delay = max(self.policy.backoff(self.stalled), hint or 0.0)
        asked = " as the server asks" if hint is not None and hint >= delay else ""
        log.warning("%s: %s; trying again in %.0f s%s", self.what, reason(err), delay, asked)
        self.policy.sleep(delay)
        return True


# ---------------------------------------------------------------- requests


class Http:
    """Opens URLs with noisytag's User-Agent and a timeout (seconds, per connect and per read)."""

    def __init__(self, user_agent: str = USER_AGENT, timeout: float = 60.0):
        self.user_agent, self.timeout = user_agent, timeout

    def open(self, url: str, start: int | None = None, accept: str | None = None) -> HTTPResponse:
        """GET ``url`` (from byte ``start`` on, when given); an HTTP error status raises ``HTTPError``."""
        headers = {"User-Agent": self.user_agent}
        if start is not None:
            headers["Range"] = f"bytes={start}-"
        if accept:
            headers["Accept"] = accept
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.timeout)


def get_json(url: str, http: Http, policy: RetryPolicy, what: str) -> object:
    """The JSON answer of ``url``, tried again under ``policy``; a failure is a one-line
    :class:`FetchError` that starts with ``what``."""
    attempts = Attempts(policy, url)
    while True:
        try:
            with http.open(url, accept="application/json") as response:
                return json.loads(response.read().decode("utf-8"))
        except NETWORK_ERRORS as err:
            if not attempts.retry(err):
                raise FetchError(f"{what} ({reason(err)})") from err
        except ValueError as err:
            raise FetchError(f"{what}: not JSON ({' '.join(str(err).split())})") from err


# ---------------------------------------------------------------- one file


def _hash_file(path: Path, algorithm: str):
    """A hashlib object fed with the bytes of ``path``."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            hasher.update(block)
    return hasher


class _Part:
    """A ``.part`` file being appended to and the running hash of its bytes. ``keep=False`` empties it
    without reading it; ``keep=True`` reads the held bytes once, to continue their hash."""

    def __init__(self, path: Path, algorithm: str, keep: bool):
        self.algorithm, self.received = algorithm, 0
        self.fh = open(path, "ab")  # noqa: SIM115 - closed by close()
        if keep:
            self.hasher, self.have = _hash_file(path, algorithm), path.stat().st_size
        else:
            self.reset()

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.hasher.update(data)
        self.have += len(data)
        self.received += len(data)

    def reset(self) -> None:
        self.fh.truncate(0)
        self.hasher, self.have = hashlib.new(self.algorithm), 0

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


def _first_byte(response: HTTPResponse, size: int) -> int | None:
    """Where a 206 answer starts (None: its Content-Range is missing, malformed or of another size)."""
    found = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", response.headers.get("Content-Range", ""))
    if not found or found.group(2) not in ("*", str(size)):
        return None
    return int(found.group(1))


def _probe(http: Http, file: RemoteFile, held: int) -> tuple[str, bool, HTTPResponse]:
    """Open ``file`` at byte ``held`` on the first URL that answers 206 from there: (url, True, answer).

    A URL answering 200 ignores ranges: it is kept open as the fallback, (url, False, answer from byte 0),
    used only when no later URL resumes. A retryable error is raised at once (the policy waits, then the
    probe starts again from the best URL); other errors move on to the next URL, and the last is raised.
    """
    fallback: tuple[str, HTTPResponse] | None = None
    error: BaseException | None = None
    try:
        for url in file.urls:
            try:
                response = http.open(url, start=held)
            except urllib.error.HTTPError as err:
                if retryable(err):
                    raise
                error = err
                continue
            if response.status == 206 and _first_byte(response, file.size) == held:
                return url, True, response
            if response.status == 206:
                error = FetchError(
                    f"{file.name}: {url} answered {response.headers.get('Content-Range')!r} for byte "
                    f"{held:,} of {file.size:,}"
                )
                response.close()
            elif fallback is None:
                fallback = (url, response)
            else:
                response.close()
        if fallback is not None:
            (url, response), fallback = fallback, None
            return url, False, response
        raise error or FetchError(f"{file.name}: the record gives no URL for it")
    finally:
        if fallback is not None:
            fallback[1].close()


def _receive(response: HTTPResponse, part: _Part, start: int, size: int, progress: Progress) -> None:
    """Append an answer that begins at byte ``start`` (0 or ``part.have``) to ``part``, up to ``size``."""
    if start != part.have:
        part.reset()
        progress.restart()
    while part.have < size:
        data = response.read(min(CHUNK, size - part.have))
        if not data:
            raise ConnectionError("the server closed the connection")
        part.write(data)
        progress.advance(len(data))


def _stamp(path: Path, checksum: str | None) -> dict:
    stat = path.stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checksum": checksum}


def verified_marker(path: Path) -> Path:
    """The file that records ``path`` as verified (its size, mtime and the checksum it matched)."""
    return path.with_name(f"{path.name}.verified")


def _refuse(file: RemoteFile, path: Path, digest: str) -> FetchError:
    """Move a file whose checksum does not match aside (kept as ``.bad``) and say so in one line."""
    bad = path.with_name(f"{file.name}.bad")
    os.replace(path, bad)
    algorithm, _, expected = str(file.checksum).partition(":")
    return FetchError(
        f"{file.name}: bad checksum ({algorithm} {digest}, the record says {expected}); the download is "
        f"kept as {bad}, run again to download it anew"
    )


def download_file(
    file: RemoteFile,
    folder: Path,
    progress: Progress | None = None,
    policy: RetryPolicy | None = None,
    http: Http | None = None,
) -> Path:
    """Download ``file`` into ``folder`` (resuming its ``.part``), verify it and return its path.

    A file already there and verified is returned as is. Network errors are tried again under ``policy``;
    when it gives up, or on a bad checksum, a one-line :class:`FetchError` is raised and the received
    bytes stay for the next run.
    """
    progress, policy, http = progress or Progress(), policy or RetryPolicy(), http or Http()
    folder.mkdir(parents=True, exist_ok=True)
    path, part_path = folder / file.name, folder / f"{file.name}.part"
    algorithm, _, expected = (file.checksum or "md5:").partition(":")
    if algorithm not in hashlib.algorithms_available:
        raise FetchError(f"{file.name}: unknown checksum algorithm {algorithm!r}")
    if not expected:
        log.warning("%s: the record gives no checksum; the download is not verified", file.name)
    if path.is_file():
        with contextlib.suppress(OSError, ValueError):
            if json.loads(verified_marker(path).read_text()) == _stamp(path, file.checksum):
                return path
        digest = _hash_file(path, algorithm).hexdigest()
        if expected and digest != expected:
            raise _refuse(file, path, digest)
        write_json(verified_marker(path), _stamp(path, file.checksum))
        return path
    held = part_path.stat().st_size if part_path.is_file() else 0
    held = held if held <= file.size else 0
    part = _Part(part_path, algorithm, keep=True) if held == file.size else None  # complete: verify only
    url, resumable, attempts = None, False, Attempts(policy, file.name)
    try:
        while part is None or part.have < file.size:
            received = part.received if part else 0
            try:
                if part is None:  # the probe: which URL, from which byte
                    url, resumable, response = _probe(http, file, held)
                    start = held if resumable else 0
                    part = _Part(part_path, algorithm, keep=start > 0)
                    if held and not start:
                        progress.restart()
                    if not resumable:
                        log.info("%s: %s cannot resume; a broken connection starts it over", file.name, url)
                        progress.note("server cannot resume")
                else:
                    start = part.have if resumable else 0
                    response = http.open(url, start=start or None)
                    if response.status != 206:
                        start = 0  # the server ignored the range this time: start over
                    elif _first_byte(response, file.size) != start:
                        response.close()
                        raise ConnectionError(f"the server did not resume at byte {start}")
                with response:
                    _receive(response, part, start, file.size, progress)
            except NETWORK_ERRORS as err:
                if part is None and held and getattr(err, "code", None) == 416:
                    held = 0  # no URL holds the bytes we hold: start over
                    continue
                if not attempts.retry(err, progressed=(part.received if part else 0) > received):
                    have = part.have if part else held
                    raise FetchError(
                        f"{file.name}: network error after {have:,} of {file.size:,} bytes "
                        f"({reason(err)}); kept {part_path.name}, run again to resume"
                    ) from err
    finally:
        if part is not None:
            part.close()
    digest = part.hasher.hexdigest()
    if expected and digest != expected:
        raise _refuse(file, part_path, digest)
    os.replace(part_path, path)
    write_json(verified_marker(path), _stamp(path, file.checksum))
    return path
