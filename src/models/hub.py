"""Exports by Hugging Face Hub repository id: `org/name` (or `org/name@revision`) wherever an export
folder is taken. The files come through huggingface_hub's own download and cache (hf_hub_download:
HF_HOME / HF_HUB_CACHE, HF_HUB_OFFLINE=1, a token from the usual places, revisions pinned to the
commit they resolve to), then go through the same checks as a local folder (pretrained.read_export).

An explicit hf_hub_download of the export's files rather than PyTorchModelHubMixin: an export is this
project's folder (config.json with the encoder config and the data's normalisation, weights checked
before the model is built), which every entry point already reads; the mixin would write its own
config format and build the model from it without those checks (docs/interop.md).
"""

from __future__ import annotations

import re
from pathlib import Path

from src.utils.errors import MissingInput

CONFIG, WEIGHTS, HEADS = "config.json", "encoder.safetensors", "heads.safetensors"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def is_repo_id(text: str) -> bool:
    """Whether text names a Hub repository (org/name[@revision]) rather than a path: it has that
    form and nothing exists at that path."""
    return bool(REPO_ID.match(text)) and not Path(text).exists() and not text.startswith(".")


def split_revision(text: str) -> tuple[str, str | None]:
    repo, _, revision = text.partition("@")
    return repo, revision or None


def resolve(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local path as it is; a repository id: the folder in the Hub cache holding its export
    (config.json, encoder.safetensors, and heads.safetensors when the repository has one)."""
    text = str(path_or_id)
    if not is_repo_id(text):
        return Path(path_or_id)
    repo, pinned = split_revision(text)
    revision = revision or pinned
    try:
        config = download(repo, CONFIG, revision)
    except MissingInput as e:  # a mistyped local path looks like a repository id too
        raise MissingInput(f"{text}: no such file or folder here, and from the Hub: {e}") from None
    download(repo, WEIGHTS, revision)
    try:
        download(repo, HEADS, revision)
    except MissingInput:  # only SSL continuation reads the heads; an export may have none
        pass
    return config.parent


def download(repo: str, filename: str, revision: str | None = None) -> Path:
    """One file of a Hub repository through the cache; a file, revision or repository that cannot
    be had (offline and not cached, or not on the Hub) as one MissingInput naming it."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}{f'@{revision}' if revision else ''}"
    try:
        return Path(hf_hub_download(repo, filename, revision=revision))
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise MissingInput(
            f"{where}: {filename} is not in the Hub cache ({constants.HF_HUB_CACHE}) and {why}; "
            "download it once online, or pass the revision that is cached"
        ) from None
    except RevisionNotFoundError:
        raise MissingInput(f"{where}: no revision {revision!r} on the Hub") from None
    except EntryNotFoundError:
        raise MissingInput(f"{where}: the repository has no {filename}") from None
    except RepositoryNotFoundError:
        raise MissingInput(f"{repo}: no such repository on the Hub (private? log in or set HF_TOKEN)") from None
    except HfHubHTTPError as e:
        raise MissingInput(f"{where}: the Hub refused {filename} ({e})") from None
