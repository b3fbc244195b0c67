"""Which Python environment the README's commands install into (scripts/select_python.sh).

A distribution's python3 (Debian 12, Ubuntu 23.04+) is externally managed (PEP 668) and
refuses `pip install`, so outside an activated environment the scripts must make and use a
venv of their own; inside one (venv or conda) they must use it as is. These tests run the
selection logic itself with fake interpreters, environments and apt-get on PATH.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SELECT = REPO / "scripts" / "select_python.sh"


def _select(env: dict[str, str]) -> subprocess.CompletedProcess:
    """Source select_python.sh in a clean bash and print what it chose."""
    script = f'source "{SELECT}" && kdh_select_python && echo "$KDH_ENV_KIND|$KDH_PYTHON|$(command -v python3)"'
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)


def _fake_env_dir(root: Path) -> Path:
    """A folder shaped like an environment: bin/python3 is the real interpreter."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python3").symlink_to(sys.executable)
    return root


def _base_env(path_dirs: list[Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "KDH_VENV")}
    env["PATH"] = os.pathsep.join([str(p) for p in path_dirs] + ["/usr/bin", "/bin"])
    return env


def _fake_distribution_python(bin_dir: Path, venv_works: bool) -> None:
    """A python3 like Debian's: pip refuses (PEP 668); `-m venv` fails without python3-venv."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    venv_branch = f'exec "{sys.executable}" "$@"' if venv_works else (
        'echo "The virtual environment was not created successfully because ensurepip is not available." >&2; exit 1'
    )
    (bin_dir / "python3").write_text(
        "#!/bin/bash\n"
        'if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "error: externally-managed-environment" >&2; exit 1; fi\n'
        f'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then {venv_branch}; fi\n'
        f'exec "{sys.executable}" "$@"\n'
    )
    (bin_dir / "python3").chmod(0o755)


def test_active_virtualenv_is_used_as_is(tmp_path: Path) -> None:
    active = _fake_env_dir(tmp_path / "myenv")
    env = _base_env([])
    env["VIRTUAL_ENV"] = str(active)
    env["KDH_VENV"] = str(tmp_path / "must_not_be_created")
    result = _select(env)
    assert result.returncode == 0, result.stderr
    kind, chosen, on_path = result.stdout.strip().split("|")
    assert kind == "active-venv"
    assert chosen == on_path == str(active / "bin" / "python3")
    assert not (tmp_path / "must_not_be_created").exists()


def test_conda_env_is_used_as_is(tmp_path: Path) -> None:
    conda = _fake_env_dir(tmp_path / "conda_env")
    env = _base_env([])
    env["CONDA_PREFIX"] = str(conda)
    env["KDH_VENV"] = str(tmp_path / "must_not_be_created")
    kind, chosen, _ = _select(env).stdout.strip().split("|")
    assert (kind, chosen) == ("conda", str(conda / "bin" / "python3"))
    assert not (tmp_path / "must_not_be_created").exists()


def test_externally_managed_python_gets_a_project_venv_reused_next_time(tmp_path: Path) -> None:
    _fake_distribution_python(tmp_path / "distro_bin", venv_works=True)
    env = _base_env([tmp_path / "distro_bin"])
    env["KDH_VENV"] = str(tmp_path / "venv")
    first = _select(env)
    assert first.returncode == 0, first.stderr
    kind, chosen, on_path = first.stdout.strip().split("|")
    assert kind == "project-venv"
    assert chosen == on_path == str(tmp_path / "venv" / "bin" / "python3")
    # The venv's pip works (the distribution's refused), so installs go there.
    pip = subprocess.run([chosen, "-m", "pip", "--version"], capture_output=True, text=True)
    assert pip.returncode == 0 and str(tmp_path / "venv") in pip.stdout
    assert "creating a virtual environment" in first.stderr

    marker = tmp_path / "venv" / "kept"
    marker.write_text("")
    second = _select(env)
    assert second.returncode == 0 and second.stdout.strip().split("|")[0] == "project-venv"
    assert marker.exists() and "creating" not in second.stderr


def test_missing_python3_venv_names_the_package_to_install(tmp_path: Path) -> None:
    _fake_distribution_python(tmp_path / "distro_bin", venv_works=False)
    calls = tmp_path / "apt_calls"
    (tmp_path / "distro_bin" / "apt-get").write_text(f'#!/bin/bash\necho "$@" >> "{calls}"\nexit 100\n')
    (tmp_path / "distro_bin" / "apt-get").chmod(0o755)
    env = _base_env([tmp_path / "distro_bin"])
    env["KDH_VENV"] = str(tmp_path / "venv")
    result = _select(env)
    assert result.returncode != 0
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert f"python{minor}-venv" in error_lines[0] and "python3-venv" in error_lines[0]
    if os.geteuid() == 0:  # as root it tries apt-get first
        assert "python3-venv" in calls.read_text()
    assert not (tmp_path / "venv").exists()
