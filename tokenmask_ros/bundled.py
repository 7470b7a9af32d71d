"""Where the bundled checkpoints live, and which one is the default.

Installed packages keep them in ``share/tokenmask_ros/models`` (found through the ament
index); a source checkout keeps them in ``models/``. The names are tried in order, so a
better model added ahead of the synthetic one becomes the default of nodes, demos and
benchmarks without a configuration change.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

PACKAGE = 'tokenmask_ros'
# Preferred first.
BUNDLED_MODELS = ('tokenmask_vit_tiny_synthetic.safetensors',)
SOURCE_MODELS_DIR = Path(__file__).resolve().parents[1] / 'models'


def model_dirs() -> list[Path]:
    """The installed share folder's ``models/`` (when installed), then the source tree's."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)) / 'models')
    except (ImportError, LookupError, OSError):  # no ament_index_python, no AMENT_PREFIX_PATH
        # (ROS not sourced) or the package not installed
        pass
    dirs.append(SOURCE_MODELS_DIR)
    return dirs


def default_model_path() -> Path:
    """The best bundled checkpoint that exists; ``FileNotFoundError`` naming where we looked."""
    dirs = model_dirs()
    for name in BUNDLED_MODELS:
        for folder in dirs:
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f'no bundled model ({", ".join(BUNDLED_MODELS)}) in '
                            f'{", ".join(str(d) for d in dirs)}; pass a model path')


def resolve_model_path(model: str | Path | None) -> Path:
    """The model file a user means: the bundled default for ``None``/``''``, the given path
    when it exists, a bundled file for a bare bundled file name (``--model
    tokenmask_vit_tiny_synthetic.safetensors`` from any folder), the converted checkpoint of
    a Hugging Face EoMT repo for a hub id (``owner/name[@revision]`` that is not a path on
    disk; see :mod:`tokenmask_ros.model.hub`), else the path unchanged.

    Every place that takes a model path (CLI, demo, node parameter) goes through here, so
    the names in the model card work everywhere. ``FileNotFoundError`` when no bundled
    model exists for the default, or a hub id cannot be resolved (``HubError``, one sentence
    saying what to download); a missing explicit path is left to the caller's check
    (use :func:`not_found_message`).
    """
    if model is None or not str(model).strip():
        return default_model_path()
    text = str(model).strip()
    path = Path(text).expanduser()
    if path.exists():
        return path
    if '/' in text:  # imported only here: the hub module loads PyTorch
        from tokenmask_ros.model.hub import parse_hub_id, resolve_hub_model

        hub_id = parse_hub_id(text)
        if hub_id is not None:
            return resolve_hub_model(*hub_id)
    if '/' in text or os.sep in text:  # a path with folders
        return path
    for folder in model_dirs():
        if (folder / path.name).is_file():
            return folder / path.name
    return path


def not_found_message(what: str, path: str | Path) -> str:
    """``'<what> not found: <path>'``, naming the bundled model when ``path`` is a bundled name.

    A user who types the documented file name from the wrong folder gets pointed at the
    copy that is installed.
    """
    message = f'{what} not found: {path}'
    if Path(path).name in BUNDLED_MODELS:
        with contextlib.suppress(FileNotFoundError):
            message += f' (the bundled model in this checkout is {default_model_path()})'
    return message
