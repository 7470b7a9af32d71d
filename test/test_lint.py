"""ruff over the whole repository, with the configuration in ruff.toml."""

from conftest import REPO_ROOT, run_command


def test_ruff_finds_nothing(ruff_executable):
    result = run_command([ruff_executable, 'check', '--output-format', 'concise', str(REPO_ROOT)],
                         cwd=REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
