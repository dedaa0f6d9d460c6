"""Data in: what clips exist and where their labels come from.

Owns the Dataset model and the competition layout (``dataset``), manifests over arbitrary folders
(``manifest``), the synthetic demo set (``synth`` + ``sounds``), audio file listing (``files``) and the
FSDKaggle2019 download (``fetch/``: a generic resumable downloader apart from the recipe, and the
split-zip reader). May import only the base modules (config, plan, rundir,
fileio, metrics); never audio decoding, models or anything above.
"""
