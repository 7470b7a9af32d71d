"""Hugging Face hub ids (``owner/name[@revision]``) as model sources, with no network needed.

A hub id is looked up in the local Hugging Face cache first (``$HF_HUB_CACHE``, else
``$HF_HOME/hub``), downloaded only when that misses and downloads are allowed (not with
``HF_HUB_OFFLINE=1``), and converted once into the project cache
(``$TOKENMASK_CACHE_DIR/hub`` or ``~/.cache/tokenmask_ros/hub``), keyed by repo id and
snapshot commit, so a robot that was given the cache folder never needs the network.
Only ``config.json``, ``preprocessor_config.json`` and safetensors files are fetched:
nothing that could be unpickled or executed. No ROS, no runtime imports (the ``model``
layer), so the root-level :mod:`tokenmask_ros.bundled` can resolve ids for every caller.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

ALLOW_PATTERNS = ['config.json', '*.safetensors', 'preprocessor_config.json']
#: Bumped when the importer or the label-set rules change, so older conversions are redone.
CONVERSION_VERSION = 1
HUB_SUBDIR = 'hub'
# HF repo-id rules: one owner and one name of [A-Za-z0-9_.-], at most 96 characters each,
# neither starting nor ending with '-' or '.', and no '--' or '..' anywhere.
_PART = r'(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?'
_REPO_ID = re.compile(rf'({_PART})/({_PART})')
# A name ending in one of these is a file, never a repo (``models/x.safetensors``).
FILE_SUFFIXES = ('.safetensors', '.onnx', '.json', '.pt', '.pth', '.bin', '.ckpt', '.engine',
                 '.plan', '.trt', '.yaml', '.yml', '.txt')


class HubError(FileNotFoundError):
    """A hub id could not be made into a local checkpoint; the message says what to do."""


def parse_hub_id(text: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``text`` names a hub repo, else ``None`` (a path).

    An existing path always wins; ``./x/y``, ``../x``, ``~/x``, absolute paths and names
    with a file suffix are paths; ``owner/name`` (optionally ``@revision``) that follows
    HF's repo-id rules and does not exist on disk is a hub id.
    """
    text = str(text).strip()
    if not text or Path(text).expanduser().exists():
        return None
    if text.startswith(('.', '/', '~')) or (os.sep != '/' and os.sep in text):
        return None
    repo_id, _, revision = text.partition('@')
    if '@' in text and not revision.strip():
        return None
    if not _REPO_ID.fullmatch(repo_id) or repo_id.lower().endswith(FILE_SUFFIXES):
        return None
    return repo_id, revision or None


def hf_cache_dir() -> Path:
    """The HF hub cache, read from the environment now (huggingface_hub reads it at import)."""
    for name in ('HF_HUB_CACHE', 'HUGGINGFACE_HUB_CACHE'):
        if os.environ.get(name):
            return Path(os.path.expandvars(os.environ[name])).expanduser()
    if os.environ.get('HF_HOME'):
        return Path(os.path.expandvars(os.environ['HF_HOME'])).expanduser() / 'hub'
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def downloads_allowed() -> bool:
    """False under ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set to a true value."""
    from huggingface_hub import constants

    flags = [os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE')]
    env_offline = any(str(f).strip().upper() in {'1', 'ON', 'YES', 'TRUE'} for f in flags if f)
    return not (env_offline or constants.HF_HUB_OFFLINE)


def tokenmask_cache_dir() -> Path:
    """``$TOKENMASK_CACHE_DIR``, else ``~/.cache/tokenmask_ros`` (the runtime's cache root)."""
    root = os.environ.get('TOKENMASK_CACHE_DIR') or Path.home() / '.cache' / 'tokenmask_ros'
    return Path(root).expanduser()


def snapshot_folder(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of ``repo_id``: from the HF cache, else downloaded.

    :class:`HubError` (one sentence saying what to download and where) when it is not
    cached and downloads are off or fail.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = hf_cache_dir()
    kwargs = {'repo_id': repo_id, 'revision': revision, 'allow_patterns': ALLOW_PATTERNS,
              'cache_dir': str(cache)}
    shown = repo_id + (f'@{revision}' if revision else '')
    try:
        return Path(snapshot_download(**kwargs, local_files_only=True))
    except LocalEntryNotFoundError:
        pass
    except HFValidationError as error:
        raise HubError(f'{shown} is not a valid hub id: {error}') from None
    revision_option = f' --revision {revision}' if revision else ''
    fetch_hint = (f'run `hf download {repo_id}{revision_option}` (or `huggingface-cli '
                  f'download`) on a machine with network and copy its cache folder to {cache}, '
                  'or pass a local folder')
    if not downloads_allowed():
        raise HubError(f'{shown} is not in the Hugging Face cache (HF_HUB_CACHE={cache}) and '
                       f'downloads are off (HF_HUB_OFFLINE): {fetch_hint}')
    try:
        return Path(snapshot_download(**kwargs))
    except Exception as error:  # network, authentication, missing repo: all end here
        reason = ' '.join(str(error).split())[:300]
        raise HubError(f'{shown} could not be downloaded into {cache} ({type(error).__name__}: '
                       f'{reason}): {fetch_hint}') from None


def converted_path(repo_id: str, commit: str, cache_dir: str | Path | None = None) -> Path:
    """Where the converted checkpoint of ``repo_id`` at ``commit`` lives in the project cache."""
    root = Path(cache_dir) if cache_dir is not None else tokenmask_cache_dir() / HUB_SUBDIR
    return root / f'{repo_id.replace("/", "--")}-{commit}-v{CONVERSION_VERSION}.safetensors'


def resolve_hub_model(repo_id: str, revision: str | None = None,
                      cache_dir: str | Path | None = None) -> Path:
    """The TokenMask checkpoint for a hub EoMT repo, converting it on first use only.

    A later call (same snapshot commit) returns the converted file without reading the
    HF snapshot again. The file is written atomically, so a reader never sees half of it.
    """
    from tokenmask_ros.model.checkpoint import save_checkpoint
    from tokenmask_ros.model.eomt_import import EomtImportError, import_hf_eomt

    folder = snapshot_folder(repo_id, revision)
    target = converted_path(repo_id, folder.name, cache_dir)
    if target.is_file():
        return target
    try:
        model = import_hf_eomt(folder)
    except EomtImportError as error:
        raise HubError(f'{repo_id} cannot be imported: {error}') from None
    try:
        save_checkpoint(model, target, extra_metadata={
            'imported_from': f'{repo_id}@{folder.name}'})
    except OSError as error:
        raise HubError(f'cannot write {target} ({error}): point $TOKENMASK_CACHE_DIR at a '
                       'writable folder') from None
    return target
