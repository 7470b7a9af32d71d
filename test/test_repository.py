"""The repository documents itself: no file points outside it, and the promised files exist."""

from __future__ import annotations

import re
import subprocess
import xml.etree.ElementTree as ET

import pytest
from conftest import REPO_ROOT

# Text that would send a reader to a file that is not in the repository: the founding
# design notes and reference folder of the team, or an absolute path of a development box.
# Assembled from parts so that this file, which names them only to forbid them, does not
# itself read as a citation of them.
_OUTSIDE_NAMES = ('DESIGN' + '.md', '..' + '/shared', '/' + 'work/', 'shared' + '/reference',
                  'env' + '-recipe')
OUTSIDE_REFERENCES = re.compile('|'.join(re.escape(name) for name in _OUTSIDE_NAMES))
TEXT_SUFFIXES = {'.py', '.md', '.yaml', '.yml', '.sh', '.xml', '.cfg', '.toml', '.txt',
                 '.rviz', '.msg', '.json', ''}


def tracked_text_files() -> list:
    try:
        listing = subprocess.run(['git', 'ls-files', '-z'], cwd=REPO_ROOT, capture_output=True,
                                 check=True).stdout.decode().split('\0')
    except (OSError, subprocess.CalledProcessError):
        pytest.skip('not a git checkout')
    paths = [REPO_ROOT / name for name in listing if name]
    return [p for p in paths if p.suffix in TEXT_SUFFIXES and p.is_file()
            and p.stat().st_size < 2_000_000]


def test_no_file_cites_a_path_outside_the_repository():
    offenders = []
    for path in tracked_text_files():
        for number, line in enumerate(path.read_text(errors='replace').splitlines(), 1):
            if OUTSIDE_REFERENCES.search(line):
                offenders.append(f'{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}')
    assert not offenders, 'references to files outside the repository:\n' + '\n'.join(offenders)


def test_license_file_matches_package_xml():
    license_name = ET.parse(REPO_ROOT / 'package.xml').getroot().findtext('license')
    text = (REPO_ROOT / 'LICENSE').read_text()
    assert license_name == 'Apache-2.0'
    assert 'Apache License' in text and 'Version 2.0' in text


def test_architecture_doc_names_only_existing_modules():
    """docs/architecture.md is the living design: every module path it names must exist."""
    doc = (REPO_ROOT / 'docs' / 'architecture.md').read_text()
    named = set(re.findall(r'`((?:tokenmask_ros/|model/|runtime/|ros/|training/|scripts/)'
                           r'[\w/]+(?:\.py|/))`', doc))
    assert named, 'the architecture document names no modules'
    missing = []
    for name in named:
        candidates = [REPO_ROOT / name, REPO_ROOT / 'tokenmask_ros' / name]
        if not any(c.exists() for c in candidates):
            missing.append(name)
    assert not missing, f'docs/architecture.md names modules that do not exist: {missing}'
