"""fetch: a miniature FSDKaggle2019 record on loopback is downloaded, verified, unpacked and arranged."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from loopback import Loopback

from noisytag.data.dataset import load_dataset
from noisytag.data.fetch import (
    DOWNLOADS,
    FetchError,
    RemoteFile,
    RetryPolicy,
    download_file,
    fetch,
    open_zip,
    parse_record,
    parse_vocabulary,
    plan,
    record_files,
    unpack,
    write_layout,
)
from noisytag.data.fetch.download import USER_AGENT

RECORD = 4242
CLASSES = ["Bark", "Church_bell", "Hiss", "Walk_and_footsteps"]
PREFIX = "FSDKaggle2019"
HAVE_ZIP = shutil.which("zip") is not None


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


# ---------------------------------------------------------------- the miniature record


def _wav(rng: np.random.Generator, label: str) -> bytes:
    """0.2-0.35 s of 44.1 kHz 16-bit: a tone per class plus noise (so the pipeline has something to learn)."""
    n = int(44100 * rng.uniform(0.2, 0.35))
    t = np.arange(n) / 44100
    tone = 0.3 * np.sin(2 * np.pi * (300 + 500 * CLASSES.index(label)) * t)
    buf = io.BytesIO()
    sf.write(buf, (tone + 0.05 * rng.standard_normal(n)).astype(np.float32), 44100, "PCM_16", format="WAV")
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _clips(rng, split: str, per_class: int) -> pd.DataFrame:
    """Clip names and label sets: ``per_class`` clips per class, every third with a second label."""
    rows = []
    for i in range(per_class * len(CLASSES)):
        labels = [CLASSES[i % len(CLASSES)]]
        if i % 3 == 2:
            labels.append(CLASSES[(i + 1) % len(CLASSES)])
        rows.append((f"{hashlib.md5(f'{split}{i}'.encode()).hexdigest()[:8]}.wav", ",".join(labels)))
    return pd.DataFrame(rows, columns=["fname", "labels"])


@dataclass
class Record:
    """The files of the miniature record (name → bytes), the clips behind them, and the noisy parts."""

    files: dict[str, bytes]
    clips: dict[str, pd.DataFrame]
    audio: dict[str, dict[str, bytes]]
    noisy_parts: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def record(tmp_path_factory) -> Record:
    rng = np.random.default_rng(0)
    clips = {"curated": _clips(rng, "c", 4), "noisy": _clips(rng, "n", 4), "test": _clips(rng, "t", 2)}
    audio = {
        s: {f: _wav(rng, lab.split(",")[0]) for f, lab in zip(t.fname, t.labels, strict=True)}
        for s, t in clips.items()
    }
    files = {}
    curated = f"{PREFIX}.audio_train_curated"
    files[f"{curated}.zip"] = _zip({f"{curated}/{f}": d for f, d in audio["curated"].items()})
    test = f"{PREFIX}.audio_test"  # an extra nesting level and macOS junk: found by name, junk skipped
    members = {f"{test}/{test}/{f}": d for f, d in audio["test"].items()}
    files[f"{test}.zip"] = _zip({**members, f"__MACOSX/{test}/._{next(iter(audio['test']))}": b"junk"})
    noisy = f"{PREFIX}.audio_train_noisy"
    parts = []
    if HAVE_ZIP:
        work = tmp_path_factory.mktemp("noisy_zip")
        (work / noisy).mkdir()
        for f, d in audio["noisy"].items():
            (work / noisy / f).write_bytes(d)
        subprocess.run(["zip", "-q", "-r", "-s", "64k", f"{noisy}.zip", noisy], cwd=work, check=True)
        parts = sorted(p.name for p in work.glob(f"{noisy}.z*"))
        files.update({name: (work / name).read_bytes() for name in parts})
    else:
        files[f"{noisy}.zip"] = _zip({f"{noisy}/{f}": d for f, d in audio["noisy"].items()})
    meta = f"{PREFIX}.meta"
    curated_meta = clips["curated"].assign(freesound_id=range(len(clips["curated"])), license="CC0")
    noisy_meta = clips["noisy"].assign(flickr_video_URL="http://flickr/x", license="CC-BY")
    usage = ["Public" if i % 3 == 0 else "Private" for i in range(len(clips["test"]))]
    test_meta = clips["test"].assign(usage=usage, freesound_id=0, license="CC-BY")
    vocabulary = "".join(f"{i},{c}\n" for i, c in enumerate(CLASSES))
    files[f"{meta}.zip"] = _zip(
        {
            f"{meta}/train_curated_post_competition.csv": curated_meta.to_csv(index=False).encode(),
            f"{meta}/train_noisy_post_competition.csv": noisy_meta.to_csv(index=False).encode(),
            f"{meta}/test_post_competition.csv": test_meta.to_csv(index=False).encode(),
            f"{meta}/vocabulary.csv": vocabulary.encode(),
        }
    )
    files[f"{PREFIX}.doc.zip"] = _zip({f"{PREFIX}.doc/README.md": b"# FSDKaggle2019\n"})
    return Record(files, clips, audio, [p for p in parts if not p.endswith(".zip")])


class Server(Loopback):
    """Zenodo's records API and file links on loopback, as the real server behaves (issue 21).

    Each file's API link (``…/api/records/<id>/files/<key>/content``, and the older shapes of it) ignores
    ``Range`` and answers 200 with the whole file; the record page's link
    (``/records/<id>/files/<key>?download=1``) honours it. Fault knobs: ``cuts`` drop connections,
    ``answers`` script error statuses per route (``api``, ``page``, ``content``), ``served`` swaps a
    file's bytes (the API keeps the record's md5). Every request and every byte sent is logged.
    """

    def __init__(self, files: dict[str, bytes]):
        self.files = dict(files)
        self.served: dict[str, bytes] = {}  # name → bytes sent instead (the API keeps the files' md5)
        self.cuts: dict[str, list[int]] = {}  # name → the next answers longer than cuts[0] stop there
        self.answers: dict[str, list[tuple[int, dict[str, str]]]] = {}  # route → next error answers
        self.page_resumes, self.page_exists = True, True
        self.payload_override: object = None
        super().__init__()
        self.api = f"{self.url}/api/records"

    def payload(self) -> object:
        if self.payload_override is not None:
            return self.payload_override
        entries = []
        for i, (name, data) in enumerate(self.files.items()):
            links = [
                {"self": f"{self.api}/{RECORD}/files/{name}/content"},  # today's shape
                {"download": f"{self.url}/api/files/bucket/{name}"},  # the legacy shape
                {},  # no link: the client builds <api>/<record>/files/<name>/content
            ][i % 3]
            checksum = f"md5:{hashlib.md5(data).hexdigest()}"
            entries.append({"key": name, "size": len(data), "checksum": checksum, "links": links})
        links = {"self": f"{self.api}/{RECORD}", "html": f"{self.url}/records/{RECORD}"}
        return {"id": RECORD, "files": entries, "links": links}

    def bytes_served(self, name: str | None = None) -> int:
        """Bytes of files sent (error answers' bodies aside)."""
        return sum(h.sent for h in self.file_requests(name) if h.status < 300)

    def file_requests(self, name: str | None = None) -> list[Hit]:
        return [h for h in self.requests if h.route != "api" and name in (None, h.name)]

    def answer(self, handler) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(handler.path).path)
        wanted = handler.headers.get("Range")
        if path.rstrip("/") == f"/api/records/{RECORD}":
            body = json.dumps(self.payload()).encode()
            return self._send(handler, "api", None, wanted, 200, body, {"Content-Type": "application/json"})
        found = re.fullmatch(r"(/records/\d+)?.*/files/([^/]+?)(/content)?", path)
        route = "page" if found and found.group(1) else "content"
        name = found.group(2) if found else None
        if name not in self.files or (route == "page" and not self.page_exists):
            return self._send(handler, route, name, wanted, 404, b"not found", {})
        data = self.served.get(name, self.files[name])
        resumes = route == "page" and self.page_resumes
        ranged = re.fullmatch(r"bytes=(\d+)-", wanted or "") if resumes else None
        start = int(ranged.group(1)) if ranged else 0
        if ranged and start >= len(data):
            return self._send(
                handler, route, name, wanted, 416, b"", {"Content-Range": f"bytes */{len(data)}"}
            )
        headers = {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"} if ranged else {}
        self._send(handler, route, name, wanted, 206 if ranged else 200, data[start:], headers)

    def _send(self, handler, route, name, wanted, status: int, body: bytes, headers: dict) -> None:
        if self.answers.get(route):
            status, headers = self.answers[route].pop(0)
            body = b""
        cuts = self.cuts.get(name) or [len(body)]
        cut = cuts.pop(0) if len(body) > cuts[0] else None
        self.send(handler, status, body, headers, lambda sent: Hit(route, name, wanted, status, sent), cut)


@dataclass(frozen=True)
class Hit:
    route: str  # api, page or content
    name: str | None
    range: str | None
    status: int
    sent: int


@pytest.fixture()
def server(record):
    srv = Server(record.files)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def fetched(record, tmp_path_factory):
    """A data set fetched once from the miniature record (shared; tests read it, never change it)."""
    srv = Server(record.files)
    root = tmp_path_factory.mktemp("fetched") / "fsd"
    summary = fetch(root, api_url=srv.api, record=RECORD, progress=False, policy=RetryPolicy(retries=0))
    srv.close()
    return root, summary


class Waits(list):
    """A ``sleep`` that records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def _policy(retries: int = 0, waits: Waits | None = None) -> RetryPolicy:
    return RetryPolicy(retries=retries, sleep=Waits() if waits is None else waits)


def _fetch(root, srv, retries: int = 0, waits: Waits | None = None, **kw):
    policy = _policy(retries, waits)
    return fetch(root, api_url=srv.api, record=RECORD, progress=False, policy=policy, **kw)


# ---------------------------------------------------------------- the layout


def test_fetched_layout_is_valid_and_complete(fetched, record):
    root, summary = fetched
    data = load_dataset(root, probe_audio=True)
    assert not data.problems and not summary.notes
    assert data.classes == CLASSES and summary.classes == 4
    for split, clips in record.clips.items():
        assert summary.clips[split] == len(clips) == len(data.split(split))
    for split, folder in (("curated", "train_curated"), ("noisy", "train_noisy"), ("test", "test")):
        for fname, wav in record.audio[split].items():
            assert (root / folder / fname).read_bytes() == wav
        assert sorted(p.name for p in (root / folder).iterdir()) == sorted(record.audio[split])
    curated = pd.read_csv(root / "train_curated.csv", dtype=str)
    assert list(curated.columns) == ["fname", "labels"]
    assert curated.equals(record.clips["curated"])
    assert '"Bark,Church_bell"' in (root / "train_curated.csv").read_text()  # several labels, quoted
    sample = pd.read_csv(root / "sample_submission.csv")
    assert list(sample.columns) == ["fname", *CLASSES] and (sample[CLASSES] == 0).all().all()
    assert list(sample["fname"]) == list(record.clips["test"]["fname"])
    for name in ("train_curated_post_competition.csv", "test_post_competition.csv", "vocabulary.csv"):
        assert (root / "meta" / name).is_file()
    assert (root / "doc" / "README.md").is_file()


def test_truth_matches_the_metadata(fetched):
    root, _ = fetched
    truth = pd.read_csv(root / "truth" / "test.csv", dtype=str)
    meta = pd.read_csv(root / "meta" / "test_post_competition.csv", dtype=str)
    assert list(truth.columns) == ["fname", "labels", "usage"]
    assert truth.equals(meta[["fname", "labels", "usage"]])
    assert set(truth["usage"]) == {"Public", "Private"}


def test_noisy_split_archive_is_joined(record, fetched):
    if not HAVE_ZIP:
        pytest.skip("the zip binary is missing: no split archive to test with")
    assert len(record.noisy_parts) >= 2  # .z01, .z02, ... + .zip
    root, _ = fetched
    for fname, wav in record.audio["noisy"].items():
        assert (root / "train_noisy" / fname).read_bytes() == wav


@pytest.mark.skipif(not HAVE_ZIP, reason="the zip binary is missing: no split archive to test with")
def test_split_archive_zip64_and_offsets_beyond_4gb(tmp_path):
    """zip64 entries read, and local-header offsets past 4 GiB (a sparse first part) get zip64 fields."""
    src = tmp_path / "A"
    src.mkdir()
    rng = np.random.default_rng(1)
    blobs = {f"f{i}.bin": rng.bytes(30_000) for i in range(8)}
    for name, data in blobs.items():
        (src / name).write_bytes(data)
    subprocess.run(["zip", "-q", "-r", "-fz", "-s", "64k", "z.zip", "A"], cwd=tmp_path, check=True)
    parts = sorted(p for p in tmp_path.glob("z.z*") if p.suffix != ".zip") + [tmp_path / "z.zip"]
    with open_zip(parts) as zf:
        assert {Path(i.filename).name: zf.read(i) for i in zf.infolist() if not i.is_dir()} == blobs
    with open_zip(parts) as zf:  # which members lie wholly after the first part
        later = [i.filename for i in zf.infolist() if i.header_offset > parts[0].stat().st_size]
    assert later
    try:
        with open(parts[0], "r+b") as fh:  # offsets on later disks now land beyond 4 GiB
            fh.truncate((1 << 32) + 10)
        if parts[0].stat().st_blocks * 512 > 1 << 30:
            pytest.skip("no sparse files on this file system")
        with open_zip(parts) as zf:
            for name in later:
                assert zf.getinfo(name).header_offset > 1 << 32
                assert zf.read(name) == blobs[Path(name).name]
    finally:
        parts[0].unlink()


def test_unpacking_resumes_a_killed_run(tmp_path, record):
    name = f"{PREFIX}.audio_train_curated.zip"
    (tmp_path / name).write_bytes(record.files[name])
    target = tmp_path / "train_curated"
    assert unpack([tmp_path / name], target, "audio") == len(record.audio["curated"])
    partial = target.rename(tmp_path / ".train_curated.partial")  # as if killed before the final rename
    files = sorted(partial.iterdir())
    for path in files[:5]:
        path.unlink()
    files[5].write_bytes(files[5].read_bytes()[:100])
    (partial / f".{files[6].name}.tmp").write_bytes(b"half")
    kept = files[-1].stat().st_mtime_ns
    unpack([tmp_path / name], target, "audio")
    assert not partial.exists() and files[-1].name in {p.name for p in target.iterdir()}
    assert {p.name: p.read_bytes() for p in target.iterdir()} == record.audio["curated"]  # no .tmp left
    assert (target / files[-1].name).stat().st_mtime_ns == kept  # complete files are not extracted again


def test_metadata_rows_without_audio_are_kept_and_noted(fetched, tmp_path):
    root = Path(shutil.copytree(fetched[0], tmp_path / "copy"))
    gone = sorted((root / "train_noisy").iterdir())[0]
    gone.unlink()
    summary = write_layout(root)
    assert summary.notes == [f"train_noisy: 1 metadata row(s) without an audio file (e.g. {gone.name})"]
    assert gone.name in set(pd.read_csv(root / "train_noisy.csv")["fname"])  # kept: check reports it


def test_a_missing_part_is_refused_with_the_archive_name(tmp_path, record):
    if not HAVE_ZIP:
        pytest.skip("the zip binary is missing: no split archive to test with")
    for name in record.noisy_parts[1:] + [f"{PREFIX}.audio_train_noisy.zip"]:
        (tmp_path / name).write_bytes(record.files[name])
    parts = [tmp_path / n for n in record.noisy_parts[1:]] + [tmp_path / f"{PREFIX}.audio_train_noisy.zip"]
    with pytest.raises(FetchError, match=r"audio_train_noisy\.zip: unreadable zip archive .*parts"):
        unpack(parts, tmp_path / "out", "audio")


# ---------------------------------------------------------------- downloads: resume, re-run, faults


def _remote(server: Server, name: str) -> RemoteFile:
    return next(f for f in record_files(server.api, RECORD, policy=_policy()) if f.name == name)


def test_a_killed_download_resumes_through_the_record_page(tmp_path, server, record):
    """The API's content link ignores Range, the record page's link honours it: resume goes there."""
    name = f"{PREFIX}.audio_train_curated.zip"
    size = len(record.files[name])
    file = _remote(server, name)
    assert file.urls[0] == f"{server.url}/records/{RECORD}/files/{name}?download=1"
    assert file.urls[1].endswith(f"/files/{name}/content")
    server.cuts[name] = [5000]
    with pytest.raises(FetchError) as err:
        download_file(file, tmp_path, policy=_policy(0))
    message = str(err.value)
    assert "\n" not in message and name in message and "network error after 5,000" in message
    assert (tmp_path / f"{name}.part").stat().st_size == 5000
    path = download_file(file, tmp_path, policy=_policy(0))
    assert path.read_bytes() == record.files[name] and not (tmp_path / f"{name}.part").exists()
    hits = [(h.route, h.range, h.status) for h in server.file_requests()]
    assert hits == [("page", "bytes=0-", 206), ("page", "bytes=5000-", 206)]
    assert server.bytes_served(name) == size  # 5000 + the rest: no byte twice


def test_a_killed_fetch_resumes_and_no_byte_is_downloaded_twice(tmp_path, server, record):
    root, name = tmp_path / "fsd", f"{PREFIX}.audio_test.zip"
    server.cuts[name] = [3000]
    with pytest.raises(FetchError, match=f"{re.escape(name)}: network error after 3,000 of"):
        _fetch(root, server, retries=0)
    _fetch(root, server, retries=0)
    assert server.bytes_served() == sum(len(data) for data in record.files.values())
    assert {h.route for h in server.file_requests()} == {"page"}  # the content links are never needed
    assert [h.range for h in server.file_requests(name)] == ["bytes=0-", "bytes=3000-"]
    assert not load_dataset(root, probe_audio=True).problems


def test_a_link_dropping_five_times_after_progress_completes(tmp_path, server, record):
    name = f"{PREFIX}.audio_train_curated.zip"
    server.cuts[name] = [2000] * 5
    waits = Waits()
    _fetch(tmp_path / "fsd", server, retries=3, waits=waits)  # five drops > three retries: progress resets
    assert [h.range for h in server.file_requests(name)] == [f"bytes={2000 * i}-" for i in range(6)]
    assert server.bytes_served(name) == len(record.files[name]) and waits == [2.0] * 5


def test_a_rate_limit_is_waited_out_as_the_server_asks(tmp_path, server, record):
    limit = {"Retry-After": "60", "X-RateLimit-Limit": "133", "X-RateLimit-Remaining": "0"}
    server.answers["page"] = [(429, {**limit, "X-RateLimit-Reset": str(int(time.time()) + 60)})]
    waits = Waits()
    _fetch(tmp_path / "fsd", server, retries=3, waits=waits)
    assert waits == [60.0]  # not the 2 s backoff
    assert server.bytes_served() == sum(len(data) for data in record.files.values())


def test_the_file_list_is_tried_again_after_a_503(tmp_path, server):
    server.answers["api"] = [(503, {}), (429, {"Retry-After": "7"})]
    waits = Waits()
    _fetch(tmp_path / "fsd", server, retries=3, waits=waits)
    assert waits == [2.0, 7.0] and [h.status for h in server.requests if h.route == "api"] == [503, 429, 200]
    server.answers["api"] = [(503, {})]
    with pytest.raises(FetchError) as err:
        record_files(server.api, RECORD, policy=_policy(0))
    assert str(err.value) == (
        f"record {RECORD}: could not read its file list from {server.api}/{RECORD} (HTTP 503 Service Unavailable)"
    )


def test_without_the_record_page_the_content_link_is_used_and_starts_over(tmp_path, server, record):
    name = f"{PREFIX}.meta.zip"
    file = _remote(server, name)
    server.page_exists, server.cuts[name] = False, [700]
    with pytest.raises(FetchError):
        download_file(file, tmp_path, policy=_policy(0))
    assert download_file(file, tmp_path, policy=_policy(0)).read_bytes() == record.files[name]
    hits = [(h.route, h.status) for h in server.file_requests()]
    assert hits == [("page", 404), ("content", 200), ("page", 404), ("content", 200)]
    assert server.bytes_served(name) == 700 + len(record.files[name])


def test_requests_name_noisytag_its_version_and_url(tmp_path, server):
    _fetch(tmp_path / "fsd", server)
    assert server.agents == {USER_AGENT}
    assert re.fullmatch(r"noisytag/\d+\.\d+\S* \(\+https://\S+\)", USER_AGENT)


def test_rerun_downloads_nothing_and_remove_archives_works_offline(tmp_path, server, record):
    root = tmp_path / "fsd"
    _fetch(root, server, keep_archives=False)
    assert server.bytes_served(f"{PREFIX}.meta.zip") == len(record.files[f"{PREFIX}.meta.zip"])
    assert not [p for p in (root / DOWNLOADS).iterdir() if p.suffix in (".zip", ".part") or ".z0" in p.name]
    seen = len(server.requests)
    summary = fetch(root, api_url="http://127.0.0.1:9/nothing", progress=False)  # unreachable: no request
    assert len(server.requests) == seen and summary.downloaded == 0
    assert not load_dataset(root, probe_audio=True).problems


def test_verified_archives_are_not_downloaded_again(tmp_path, server):
    root = tmp_path / "fsd"
    _fetch(root, server)
    for marker in (root / DOWNLOADS).glob("*.unpacked"):
        marker.unlink()  # forget the unpacking: archives are kept, verified, and re-used
    shutil.rmtree(root / "test")
    served = len(server.file_requests())
    assert _fetch(root, server).downloaded == 0
    assert len(server.file_requests()) == served
    assert not load_dataset(root, probe_audio=True).problems


def test_bad_checksum_is_refused_and_the_download_kept(tmp_path, server, record):
    name = f"{PREFIX}.audio_test.zip"
    broken = bytearray(record.files[name])
    broken[100] ^= 0xFF
    server.served[name] = bytes(broken)
    root = tmp_path / "fsd"
    with pytest.raises(FetchError) as err:
        _fetch(root, server)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{name}: bad checksum")
    assert (root / DOWNLOADS / f"{name}.bad").read_bytes() == bytes(broken)
    assert (root / DOWNLOADS / f"{PREFIX}.audio_train_curated.zip").is_file()  # fetched before: kept
    del server.served[name]
    _fetch(root, server)  # a re-run downloads it anew
    assert not load_dataset(root, probe_audio=True).problems


def test_corrupted_archive_is_refused_with_its_name(tmp_path, record):
    name = f"{PREFIX}.meta.zip"
    srv = Server({**record.files, name: b"PK\x03\x04 this is no zip archive" * 20})
    try:
        with pytest.raises(FetchError, match=rf"^{re.escape(name)}: unreadable zip archive"):
            _fetch(tmp_path / "fsd", srv)
    finally:
        srv.close()
    assert (tmp_path / "fsd" / DOWNLOADS / name).is_file()  # verified download kept


def test_dry_run_lists_and_downloads_nothing(tmp_path, server, record):
    from typer.testing import CliRunner

    from noisytag.cli import app

    root = tmp_path / "fsd"
    args = [
        "fetch",
        "fsdkaggle2019",
        str(root),
        "--api-url",
        server.api,
        "--record",
        str(RECORD),
        "--dry-run",
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for name in record.files:
        assert name in result.output
    assert f"{len(record.files)} files" in result.output and "to download" in result.output
    assert not root.exists() and not server.file_requests()
    planned = plan(root, record_files(server.api, RECORD))
    assert {p.state for p in planned} == {"missing"} and len(planned) == len(record.files)


def test_cli_fetch_and_its_errors(tmp_path, server):
    from typer.testing import CliRunner

    from noisytag.cli import app

    root = tmp_path / "fsd"
    base = ["fetch", "fsdkaggle2019", str(root), "--api-url", server.api, "--record", str(RECORD)]
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--no-progress"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "done" in result.output and not load_dataset(root, probe_audio=True).problems
    result = runner.invoke(app, ["fetch", "imagenet", str(tmp_path / "x")], env={"COLUMNS": "200"})
    assert result.exit_code == 2 and "unknown data set 'imagenet'; known: fsdkaggle2019" in result.output
    server.cuts[f"{PREFIX}.meta.zip"] = [100]
    result = runner.invoke(
        app,
        [*base[:2], str(tmp_path / "other"), *base[3:], "--retries", "0", "--no-progress"],
        env={"COLUMNS": "300"},
    )
    assert result.exit_code == 2
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"{PREFIX}.meta.zip: network error after 100" in errors[0]
    result = runner.invoke(app, [*base[:2], str(tmp_path / "third"), "--api-url", f"{server.url}/missing"])
    assert result.exit_code == 2 and "HTTP 404" in result.output


# ---------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    "text",
    [
        "0,Bark\n1,Church_bell\n",
        "index,label\n0,Bark\n1,Church_bell\n",
        "Bark,0\nChurch_bell,1\n\n",
        "label\nBark\nChurch_bell\n",
        "Bark\nChurch_bell\n",
        "0,Bark,/m/05tny_\n1,Church_bell,/m/03w41f\n",
        "index,label,mid\n0,Bark,/m/05tny_\n1,Church_bell,/m/03w41f\n",
    ],
)
def test_vocabulary_with_or_without_header(text):
    assert parse_vocabulary(text) == ["Bark", "Church_bell"]


def test_vocabulary_problems_name_the_line():
    with pytest.raises(FetchError, match="vocabulary.csv line 2"):
        parse_vocabulary("0,Bark\n1,Church,bell\n")
    with pytest.raises(FetchError, match="repeated classes Bark"):
        parse_vocabulary("0,Bark\n1,Bark\n")


def test_record_shapes_and_links():
    files_url = "https://z/api/records/1/files"
    new = {
        "files": [
            {"key": "a.zip", "size": 3, "checksum": "md5:ab", "links": {"self": "https://z/a/content"}}
        ],
        "links": {"html": "https://z/records/1"},
    }
    old = {
        "files": [
            {"filename": "a.zip", "filesize": 3, "checksum": "ab", "links": {"download": "https://d/a"}}
        ]
    }
    rdm = {
        "files": {"enabled": True, "entries": {"a.zip": {"key": "a.zip", "size": 3, "checksum": "md5:ab"}}}
    }
    page = "https://z/records/1/files/a.zip?download=1"
    assert parse_record(new, files_url) == [RemoteFile("a.zip", 3, "md5:ab", (page, "https://z/a/content"))]
    assert parse_record(old, files_url) == [RemoteFile("a.zip", 3, "md5:ab", ("https://d/a",))]
    assert parse_record(old, files_url, "https://z/records/1")[0].urls == (page, "https://d/a")
    assert parse_record(rdm, files_url)[0].urls == (f"{files_url}/a.zip/content",)
    listed = {"files": {"entries": [{"key": "a.zip", "size": 3}]}}
    assert parse_record(listed, files_url) == [RemoteFile("a.zip", 3, None, (f"{files_url}/a.zip/content",))]


@pytest.mark.parametrize(
    "payload, message",
    [
        ([], "the answer is a JSON array, not a record"),
        ({"id": 1}, "the record lists no 'files' (has id)"),
        ({"files": []}, "the record lists no files"),
        ({"files": {"enabled": True, "count": 7}}, "'files' object has no 'entries' (has count, enabled)"),
        ({"files": {"enabled": False}}, "has its files disabled"),
        ({"files": {"entries": None}}, "the record's files are a JSON null, not a list"),
        ({"files": "a.zip"}, "the record's files are a JSON string"),
        ({"files": [7]}, "file entry 1 is a JSON number, not an object"),
        ({"files": [{"key": "../x", "size": 1}]}, "unusable file name '../x'"),
        ({"files": [{"key": "a.zip"}]}, "a.zip has no usable size (None)"),
        ({"files": [{"key": "a.zip", "size": -1}]}, "a.zip has no usable size (-1)"),
        (
            {"files": [{"key": "a.zip", "size": 1, "checksum": 5}]},
            "a.zip has a checksum that is a JSON number",
        ),
        ({"files": [{"key": "a.zip", "size": 1, "links": ["x"]}]}, "a.zip has links that are a JSON array"),
        ({"files": [{"key": "a.zip", "size": 1, "links": {"self": 3}}]}, "a.zip has an unusable link 3"),
    ],
)
def test_every_unexpected_record_shape_is_one_line(payload, message):
    with pytest.raises(FetchError) as err:
        parse_record(payload, "https://z/api/records/1/files")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("https://z/api/records/1/files: ")


def test_an_rdm_record_without_entries_fails_in_the_cli_in_one_line(tmp_path, server):
    from typer.testing import CliRunner

    from noisytag.cli import app

    server.payload_override = {"id": RECORD, "files": {"enabled": True, "count": 7, "total_bytes": 9}}
    args = ["fetch", "fsdkaggle2019", str(tmp_path / "fsd"), "--api-url", server.api, "--record", str(RECORD)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "'files' object has no 'entries'" in errors[0]


# ---------------------------------------------------------------- end to end


@pytest.mark.slow
def test_fetched_data_runs_the_pipeline(fetched, tmp_path):
    from conftest import tiny_config

    from noisytag.runs.pipeline import run_pipeline

    root, _ = fetched
    cfg = tiny_config(**{"data.cache_dir": str(tmp_path / "cache")})
    run_pipeline(root, tmp_path / "run", cfg, progress=False)
    scores = pd.read_csv(tmp_path / "run" / "test_scores.csv")
    assert np.isfinite(scores["test_lwlrap"]).all() and len(scores)
    # truth/test.csv carries the leaderboard part: each part is scored on its own clips, as Kaggle did
    parts = scores[["test_lwlrap_public", "test_lwlrap_private"]].to_numpy()
    assert np.isfinite(parts).all()
