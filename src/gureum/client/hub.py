"""``hf://ORG/MODEL[@REVISION]``: a model folder pulled from the Hugging Face hub for import.

Only what serving without code reads is downloaded: safetensors weights and the JSON and text
files of the config, tokenizer and processor (never ``*.py``, never pickled weights). The pull
runs on the machine of the caller (the CLI or SDK), where the hub may be reachable; when it is
not, one clear ``HubError`` says so instead of a stack of network errors.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gureum.client.errors import GureumError

PREFIX = "hf://"
# ORG/MODEL or MODEL, then an optional @REVISION (a branch, tag or commit).
REF = re.compile(
    r"^(?P<repo>(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95})(?:@(?P<rev>[\w./-]{1,200}))?$"
)
ALLOW = [
    "*.safetensors",
    "*.json",  # config, generation config, tokenizer, processor, a sharded weights index
    "*.txt",  # merges.txt, vocab.txt
    "*.model",  # sentencepiece tokenizers (protobuf, not pickle)
    "*.tiktoken",
]


class HubError(GureumError):
    """The hub could not give the model: unreachable, offline, or no such repository."""


def is_hub_ref(path: object) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def parse(ref: str) -> tuple[str, str | None]:
    """``hf://ORG/MODEL[@REVISION]`` -> (``ORG/MODEL``, revision or None)."""
    match = REF.match(ref[len(PREFIX) :])
    if match is None or ".." in ref:
        raise HubError(
            f"{ref!r} is not a hub model reference; use hf://ORG/MODEL or hf://ORG/MODEL@REVISION",
            status=400,
            code="bad_request",
        )
    return match["repo"], match["rev"]


@contextmanager
def pulled(ref: str) -> Iterator[Path]:
    """The model's files in a temporary folder (removed afterwards)."""
    repo, revision = parse(ref)
    with tempfile.TemporaryDirectory(prefix="gureum-hf-") as tmp:
        folder = Path(tmp) / "model"
        _download(repo, revision, folder)
        shutil.rmtree(folder / ".cache", ignore_errors=True)  # the hub client's own records
        yield folder


def _download(repo: str, revision: str | None, folder: Path) -> None:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"hf://{repo}" + (f"@{revision}" if revision else "")
    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"cannot pull {where}: HF_HUB_OFFLINE is set; unset it, or download the folder "
            "elsewhere and import it as a path",
            code="hub_unreachable",
        )
    try:
        snapshot_download(repo, revision=revision, local_dir=folder, allow_patterns=ALLOW)
    except (GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise HubError(
            f"cannot pull {where}: no such model or revision on {constants.ENDPOINT}, or it is "
            f"private or gated (set HF_TOKEN) ({type(exc).__name__})",
            status=404,
            code="not_found",
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as exc:
        raise HubError(
            f"cannot pull {where}: the Hugging Face hub ({constants.ENDPOINT}) cannot be reached "
            f"from this machine ({_cause(exc)}); download the folder where it can be and import "
            "it as a path",
            code="hub_unreachable",
        ) from None


def _cause(exc: BaseException) -> str:
    """The first line of the innermost error: "ConnectError: [Errno 111] Connection refused"."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
