"""Where the bundled checkpoints live, and which one is the default.

Installed packages keep them in ``share/tokenmask_ros/models`` (found through the ament
index); a source checkout keeps them in ``models/``. The finished synthetic model wins over
the CPU preview whenever it is present, so nodes, demos and benchmarks pick it up as soon
as it lands, without a configuration change.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = 'tokenmask_ros'
# Preferred first.
BUNDLED_MODELS = ('tokenmask_vit_tiny_synthetic.safetensors',
                  'tokenmask_vit_tiny_synthetic_cpu_preview.safetensors')
SOURCE_MODELS_DIR = Path(__file__).resolve().parents[1] / 'models'


def model_dirs() -> list[Path]:
    """The installed share folder's ``models/`` (when installed), then the source tree's."""
    dirs = []
    try:
        from ament_index_python.packages import get_package_share_directory

        dirs.append(Path(get_package_share_directory(PACKAGE)) / 'models')
    except (ImportError, LookupError):  # no ament_index_python / package not installed
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
