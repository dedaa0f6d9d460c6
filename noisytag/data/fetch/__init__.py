"""Fetching a public data set: a generic resumable downloader apart from the recipe that uses it.

Owns ``download`` (one file over HTTP: User-Agent, range probe, resumable ``.part``, checksum, the retry
policy; it knows nothing of any data set), ``zenodo`` (a Zenodo record's file list and download links),
``archive`` + ``splitzip`` (unpacking zip archives, split ones in place) and ``fsdkaggle2019`` (the recipe:
which files, which folders, the label CSVs and truth). May import only ``noisytag.data`` modules and the
base modules (``noisytag``'s version, fileio); never audio decoding, models or anything above.
"""

from noisytag.data.fetch.archive import unpack
from noisytag.data.fetch.download import (
    FetchError,
    Http,
    Progress,
    RemoteFile,
    RetryPolicy,
    download_file,
    server_wait,
)
from noisytag.data.fetch.fsdkaggle2019 import (
    DATASETS,
    DOWNLOADS,
    FSDKAGGLE2019,
    DatasetSpec,
    FetchSummary,
    PlannedFile,
    dataset_spec,
    fetch,
    group_files,
    parse_vocabulary,
    plan,
    write_layout,
)
from noisytag.data.fetch.splitzip import open_zip
from noisytag.data.fetch.zenodo import API_URL, parse_record, record_files

__all__ = [
    "API_URL",
    "DATASETS",
    "DOWNLOADS",
    "FSDKAGGLE2019",
    "DatasetSpec",
    "FetchError",
    "FetchSummary",
    "Http",
    "PlannedFile",
    "Progress",
    "RemoteFile",
    "RetryPolicy",
    "dataset_spec",
    "download_file",
    "fetch",
    "group_files",
    "open_zip",
    "parse_record",
    "parse_vocabulary",
    "plan",
    "record_files",
    "server_wait",
    "unpack",
    "write_layout",
]
