"""Zenodo's records API: the files of a record and, for each, the URLs to download it from.

Zenodo gives each file one API link, ``…/api/records/<id>/files/<key>/content``, which answers a range
request with ``200`` and the whole file; the record page's link ``…/records/<id>/files/<key>?download=1``
honours ``Range``. So every file is offered with the record page's link first and the API's second
(:func:`~noisytag.data.fetch.download.download_file` keeps the first that resumes). Any answer that is not
the shape of a record (legacy, new or InvenioRDM) is a one-line :class:`FetchError`.
"""

from __future__ import annotations

import urllib.parse

from noisytag.data.fetch.download import FetchError, Http, RemoteFile, RetryPolicy, get_json

API_URL = "https://zenodo.org/api/records"


def _kind(value: object) -> str:
    """The JSON name of a value's type, for error messages."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, int | float) else type(value).__name__)


def _entries(payload: object, where: str) -> list:
    """The file entries of a records-API answer: ``files`` as a list, as ``{"entries": …}`` (InvenioRDM,
    a list or keyed by name) or keyed by file name."""
    if not isinstance(payload, dict):
        raise FetchError(f"{where}: the answer is a JSON {_kind(payload)}, not a record")
    if "files" not in payload:
        keys = ", ".join(sorted(map(str, payload))[:8]) or "nothing"
        raise FetchError(f"{where}: the record lists no 'files' (has {keys}); is its access restricted?")
    files = payload["files"]
    if isinstance(files, dict):
        if "entries" in files:
            files = files["entries"]
        elif not files or not all(isinstance(v, dict) for v in files.values()):
            keys = ", ".join(sorted(map(str, files))[:8]) or "nothing"
            disabled = "; the record has its files disabled" if files.get("enabled") is False else ""
            raise FetchError(f"{where}: the record's 'files' object has no 'entries' (has {keys}){disabled}")
        files = list(files.values()) if isinstance(files, dict) else files
    if not isinstance(files, list):
        raise FetchError(f"{where}: the record's files are a JSON {_kind(files)}, not a list")
    if not files:
        raise FetchError(f"{where}: the record lists no files")
    return files


def _remote_file(entry: object, n: int, where: str, page_url: str | None) -> RemoteFile:
    """One file entry: its name, size, checksum and URLs (record page first, then the API's link)."""
    if not isinstance(entry, dict):
        raise FetchError(f"{where}: file entry {n} is a JSON {_kind(entry)}, not an object")
    name = entry.get("key") or entry.get("filename")
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise FetchError(f"{where}: unusable file name {name!r} in the record")
    size = entry.get("size", entry.get("filesize"))
    if isinstance(size, str) and size.isdigit():
        size = int(size)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FetchError(f"{where}: {name} has no usable size ({size!r})")
    checksum = entry.get("checksum")
    if checksum is not None and not isinstance(checksum, str):
        raise FetchError(f"{where}: {name} has a checksum that is a JSON {_kind(checksum)}")
    checksum = checksum or None
    if checksum and ":" not in checksum:
        checksum = f"md5:{checksum}"
    links = entry.get("links") or {}
    if not isinstance(links, dict):
        raise FetchError(f"{where}: {name} has links that are a JSON {_kind(links)}, not an object")
    link = links.get("content") or links.get("download") or links.get("self")
    if link is not None and not (isinstance(link, str) and link.startswith(("http://", "https://"))):
        raise FetchError(f"{where}: {name} has an unusable link {link!r}")
    key = urllib.parse.quote(name)
    api = link or f"{where}/{key}/content"
    page = f"{page_url.rstrip('/')}/files/{key}?download=1" if page_url else None
    return RemoteFile(name, size, checksum, tuple(dict.fromkeys(u for u in (page, api) if u)))


def parse_record(payload: object, files_url: str, page_url: str | None = None) -> list[RemoteFile]:
    """The files of a records-API answer. ``files_url`` (``…/api/records/<id>/files``) builds a missing
    API link; the record page (the answer's ``links.html``, else ``page_url``) gives the preferred one."""
    files = _entries(payload, files_url)
    html = (payload.get("links") or {}).get("html") if isinstance(payload.get("links"), dict) else None
    page = html if isinstance(html, str) and html.startswith(("http://", "https://")) else page_url
    return [_remote_file(entry, n, files_url, page) for n, entry in enumerate(files, 1)]


def record_page(api_url: str, record: int) -> str | None:
    """``https://host/records/<id>`` for a records API at ``https://host/api/records``; None otherwise."""
    base = api_url.rstrip("/")
    return f"{base.removesuffix('/api/records')}/records/{record}" if base.endswith("/api/records") else None


def record_files(
    api_url: str, record: int, http: Http | None = None, policy: RetryPolicy | None = None
) -> list[RemoteFile]:
    """Ask the records API for the files of ``record`` (429, 5xx and timeouts are tried again)."""
    url = f"{api_url.rstrip('/')}/{record}"
    what = f"record {record}: could not read its file list from {url}"
    payload = get_json(url, http or Http(), policy or RetryPolicy(), what)
    return parse_record(payload, f"{url}/files", record_page(api_url, record))
