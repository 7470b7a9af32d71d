"""Puts the repository root on ``sys.path``, for the scripts run as ``python training/x.py``.

Why: Python then puts ``training/`` itself on the path, not the repository, so neither
``tokenmask_ros`` nor the ``training`` package would import. Each script imports this module
first, and only when run as a file (``if not __package__``); imported as ``training.x`` the
root is on the path already.
"""

import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
