"""download: the generic resumable downloader on loopback (range probe, resume, retries, rate limits).

The server here knows nothing of Zenodo or of any data set: ``/resumes/<name>`` honours ``Range``,
``/whole/<name>`` ignores it (answers 200 and the whole file), ``/gone/<name>`` is 404; ``answers`` scripts
error statuses, ``cuts`` drops connections, and every byte sent is counted. No test really waits: the
retry policy's ``sleep`` records the waits instead.
"""

from __future__ import annotations

import email.message
import email.utils
import hashlib
import re
import time
import urllib.error
from pathlib import Path

import pytest
from loopback import Loopback

import noisytag.data.fetch.download as dl
from noisytag.data.fetch import (
    FetchError,
    Http,
    Progress,
    RemoteFile,
    RetryPolicy,
    download_file,
    server_wait,
)
from noisytag.data.fetch.download import USER_AGENT, Attempts

DATA = bytes(range(256)) * 200  # 51,200 bytes
NAME = "blob.bin"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class FileServer(Loopback):
    """Serves ``DATA`` as ``/<route>/blob.bin``; logs (route, Range, status, bytes sent) per request."""

    def __init__(self):
        self.answers: list[tuple[int, dict[str, str]]] = []  # the next requests get these error answers
        self.cuts: list[int] = []  # the next answers longer than cuts[0] are cut after that many bytes
        self.stall = 0.0  # the next answer waits this long before its headers
        super().__init__()

    def file(self, *routes: str, data: bytes = DATA) -> RemoteFile:
        urls = tuple(f"{self.url}/{route}/{NAME}" for route in routes)
        return RemoteFile(NAME, len(data), f"md5:{hashlib.md5(data).hexdigest()}", urls)

    def sent(self, route: str | None = None) -> int:
        return sum(n for r, _, _, n in self.requests if route in (None, r))

    def answer(self, handler) -> None:
        route = handler.path.strip("/").split("/")[0]
        wanted = handler.headers.get("Range")
        if self.stall:
            delay, self.stall = self.stall, 0.0
            time.sleep(delay)
        if self.answers:
            status, headers = self.answers.pop(0)
            return self._send(handler, route, wanted, status, b"", headers)
        if route == "gone":
            return self._send(handler, route, wanted, 404, b"not found", {})
        found = re.fullmatch(r"bytes=(\d+)-", wanted or "") if route == "resumes" else None
        start = int(found.group(1)) if found else 0
        if found and start >= len(DATA):
            return self._send(handler, route, wanted, 416, b"", {"Content-Range": f"bytes */{len(DATA)}"})
        headers = {"Content-Range": f"bytes {start}-{len(DATA) - 1}/{len(DATA)}"} if found else {}
        self._send(handler, route, wanted, 206 if found else 200, DATA[start:], headers)

    def _send(self, handler, route: str, wanted: str | None, status: int, body: bytes, headers: dict) -> None:
        cut = self.cuts.pop(0) if self.cuts and len(body) > self.cuts[0] else None
        self.send(handler, status, body, headers, lambda sent: (route, wanted, status, sent), cut)


@pytest.fixture()
def server():
    srv = FileServer()
    yield srv
    srv.close()


class Waits(list):
    """A ``sleep`` that records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


class Notes(Progress):
    def __init__(self):
        self.notes, self.restarts, self.bytes = [], 0, 0

    def advance(self, n: int) -> None:
        self.bytes += n

    def restart(self) -> None:
        self.restarts += 1

    def note(self, text: str) -> None:
        self.notes.append(text)


def _policy(waits: Waits, **kw) -> RetryPolicy:
    return RetryPolicy(sleep=waits, **kw)


# ---------------------------------------------------------------- the probe: which URL, from which byte


def test_a_part_resumes_on_the_url_that_honours_range(tmp_path, server):
    (tmp_path / f"{NAME}.part").write_bytes(DATA[:10_000])
    path = download_file(server.file("gone", "resumes"), tmp_path, policy=_policy(Waits()))
    assert path.read_bytes() == DATA and not (tmp_path / f"{NAME}.part").exists()
    assert [r[:3] for r in server.requests] == [
        ("gone", "bytes=10000-", 404),
        ("resumes", "bytes=10000-", 206),
    ]
    assert server.sent("resumes") == len(DATA) - 10_000  # the probe is the download: no byte twice
    assert (tmp_path / f"{NAME}.verified").is_file()


def test_a_url_that_ignores_range_is_used_only_when_none_resumes(tmp_path, server, monkeypatch):
    (tmp_path / f"{NAME}.part").write_bytes(b"x" * 10_000)  # discarded: must not be read (re-hashed)
    hashed = []
    monkeypatch.setattr(dl, "_hash_file", lambda path, algorithm: hashed.append(path))
    progress = Notes()
    path = download_file(server.file("whole"), tmp_path, progress, _policy(Waits()))
    assert path.read_bytes() == DATA and not hashed
    assert progress.notes == ["server cannot resume"] and progress.restarts == 1
    assert [r[:3] for r in server.requests] == [("whole", "bytes=10000-", 200)]
    assert server.sent() == len(DATA)  # the probe's 200 answer is the download


def test_the_resuming_url_wins_over_an_earlier_one_that_ignores_range(tmp_path, server):
    path = download_file(server.file("whole", "resumes"), tmp_path, policy=_policy(Waits()))
    assert path.read_bytes() == DATA
    assert [r[0] for r in server.requests] == ["whole", "resumes"]
    assert server.sent("resumes") == len(DATA)


def test_a_non_resumable_url_starts_over_after_a_drop(tmp_path, server):
    server.cuts = [20_000]
    waits, progress = Waits(), Notes()
    path = download_file(server.file("whole"), tmp_path, progress, _policy(waits, wait=0.5))
    assert path.read_bytes() == DATA and waits == [0.5]
    assert [r[1] for r in server.requests] == ["bytes=0-", None] and progress.restarts == 1
    assert server.sent() == 20_000 + len(DATA)


# ---------------------------------------------------------------- retries


def test_drops_after_progress_never_exhaust_the_retries(tmp_path, server):
    server.cuts = [5_000] * 8  # eight drops, each after 5,000 new bytes; retries=1 would allow one stall
    waits = Waits()
    path = download_file(server.file("resumes"), tmp_path, policy=_policy(waits, retries=1, wait=0.1))
    assert path.read_bytes() == DATA and waits == [0.1] * 8
    assert [r[1] for r in server.requests] == [f"bytes={5000 * i}-" for i in range(9)]
    assert server.sent() == len(DATA)


def test_attempts_without_progress_are_capped(tmp_path, server):
    server.answers = [(503, {})] * 10
    waits = Waits()
    with pytest.raises(FetchError) as err:
        download_file(server.file("resumes"), tmp_path, policy=_policy(waits, retries=3, wait=1, max_wait=3))
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{NAME}: network error after 0 of 51,200 bytes")
    assert "HTTP 503" in message and waits == [1, 2, 3] and len(server.requests) == 4


def test_a_rate_limit_is_waited_out_as_the_server_asks(tmp_path, server):
    server.answers = [(429, {"Retry-After": "60"}), (429, {"X-RateLimit-Reset": "1000000030"})]
    waits = Waits()
    policy = _policy(waits, clock=lambda: 1_000_000_000.0)
    assert download_file(server.file("resumes"), tmp_path, policy=policy).read_bytes() == DATA
    assert waits == [60.0, 30.0] and len(server.requests) == 3


def test_a_wait_longer_than_max_hint_ends_the_attempts(tmp_path, server):
    server.answers = [(429, {"Retry-After": "3600"})]
    waits = Waits()
    with pytest.raises(FetchError, match=r"HTTP 429 .*retry after 3600 s"):
        download_file(server.file("resumes"), tmp_path, policy=_policy(waits, max_hint=900))
    assert not waits and len(server.requests) == 1


def test_final_http_errors_are_not_tried_again(tmp_path, server):
    waits = Waits()
    with pytest.raises(FetchError, match="HTTP 404"):
        download_file(server.file("gone"), tmp_path, policy=_policy(waits))
    assert not waits and len(server.requests) == 1


def test_a_timeout_is_tried_again(tmp_path, server):
    server.stall = 1.0
    waits = Waits()
    path = download_file(server.file("resumes"), tmp_path, policy=_policy(waits), http=Http(timeout=0.2))
    assert path.read_bytes() == DATA and len(waits) == 1


def test_bad_checksum_is_refused_in_one_line(tmp_path, server):
    file = server.file("resumes", data=DATA[::-1])
    with pytest.raises(FetchError) as err:
        download_file(file, tmp_path, policy=_policy(Waits()))
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{NAME}: bad checksum")
    assert (tmp_path / f"{NAME}.bad").read_bytes() == DATA


def test_user_agent_names_the_tool_its_version_and_a_url(tmp_path, server):
    download_file(server.file("resumes"), tmp_path, policy=_policy(Waits()))
    assert server.agents == {USER_AGENT}
    assert re.fullmatch(r"noisytag/\d+\.\d+\S* \(\+https?://\S+\)", USER_AGENT)


# ---------------------------------------------------------------- the policy on its own


def _http_error(code: int, **headers: str) -> urllib.error.HTTPError:
    message = email.message.Message()
    for key, value in headers.items():
        message[key.replace("_", "-")] = value
    return urllib.error.HTTPError("http://x", code, "Error", message, None)


def test_server_wait_reads_both_headers():
    now = 1_700_000_000.0
    assert server_wait(_http_error(429, Retry_After="120"), now) == 120
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert server_wait(_http_error(503, Retry_After=date), now) == pytest.approx(90)
    assert server_wait(_http_error(503, Retry_After=email.utils.formatdate(now - 5, usegmt=True)), now) == 0
    assert server_wait(_http_error(429, X_RateLimit_Reset=str(int(now) + 42)), now) == 42
    assert server_wait(_http_error(429, X_RateLimit_Reset="15"), now) == 15  # seconds from now
    assert server_wait(_http_error(500, X_RateLimit_Reset=str(int(now) + 42)), now) is None  # not a limit
    assert server_wait(_http_error(429, Retry_After="soon"), now) is None
    assert server_wait(ConnectionResetError(), now) is None


def test_backoff_doubles_per_stall_is_capped_and_starts_over_after_progress():
    waits = Waits()
    attempts = Attempts(RetryPolicy(retries=4, wait=2, max_wait=5, sleep=waits), "f")
    drop = ConnectionResetError("reset")
    assert attempts.retry(drop) and attempts.retry(drop) and attempts.retry(drop)
    assert attempts.retry(drop, progressed=True) and attempts.retry(drop)
    assert waits == [2, 4, 5, 2, 4]
    assert attempts.retry(drop) and attempts.retry(drop) and not attempts.retry(drop)  # 5th stall in a row
    assert not Attempts(RetryPolicy(retries=0, sleep=waits), "f").retry(drop, progressed=True)
    assert not Attempts(RetryPolicy(sleep=waits), "f").retry(_http_error(403))


def test_the_verified_marker_spares_a_second_hash(tmp_path, server, monkeypatch):
    file = server.file("resumes")
    download_file(file, tmp_path, policy=_policy(Waits()))
    monkeypatch.setattr(dl, "_hash_file", lambda path, algorithm: pytest.fail("hashed again"))
    assert download_file(file, tmp_path) == Path(tmp_path / NAME)
    assert len(server.requests) == 1
