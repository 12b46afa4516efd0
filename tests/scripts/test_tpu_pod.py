"""scripts/tpu_pod.sh: --dry-run prints the right, correctly quoted commands.

No gcloud and no network needed: --dry-run only prints.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "tpu_pod.sh"
BASH = shutil.which("bash") or "/bin/bash"
# A comma (ml_collections' config-string separator), a space and a quote must
# all reach the remote python unchanged.
TRAIN_ARGS = ["--config=configs/listops.py:softmax,smoke",
              "--config.note=hello world", "--config.tag=it's",
              "--workdir=gs://bucket/runs/listops"]
GCLOUD_SSH = ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
GCLOUD_SCP = ["gcloud", "compute", "tpus", "tpu-vm", "scp"]


def _run(*args, script=SCRIPT, cwd=REPO, env=None):
  return subprocess.run([BASH, str(script), *args], capture_output=True,
                        text=True, cwd=cwd, env=env, timeout=20, check=False)


def _commands(stdout):
  """The "+ ..." lines of a dry run, each split back into its argv."""
  return [shlex.split(line[2:]) for line in stdout.splitlines()
          if line.startswith("+ ")]


def _remote(argv):
  """The remote shell's words of an ssh command's --command=... value."""
  (command,) = [a for a in argv if a.startswith("--command=")]
  return shlex.split(command[len("--command="):])


def _remote_train_argv(ssh):
  """The argv the workers' python gets, after `cd DIR &&` and the env var."""
  remote = _remote(ssh)
  assert remote[:3] == ["cd", "~/efficient", "&&"], remote
  assert remote[3:7] == ["EFFICIENT_DISTRIBUTED=1", ".venv/bin/python", "-m",
                         "experiments.train"], remote
  return remote[7:]


def test_dry_run_launches_on_every_worker_with_quoted_args():
  result = _run("--tpu", "my-v4-32", "--zone", "us-central2-b", "--project",
                "proj", "--dry-run", "--", *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  (ssh,) = _commands(result.stdout)
  assert ssh[:6] == GCLOUD_SSH + ["my-v4-32"]
  for flag in ("--worker=all", "--zone=us-central2-b", "--project=proj"):
    assert flag in ssh
  command = next(a for a in ssh if a.startswith("--command="))
  assert "EFFICIENT_DISTRIBUTED=1" in command
  assert "python -m experiments.train" in command
  assert _remote_train_argv(ssh) == TRAIN_ARGS
  # And a real bash parses the remote command back to the same argv: run it
  # here, with a python that reports its env var and arguments.
  report = ("import json, os, sys; "
            "print(json.dumps([os.environ['EFFICIENT_DISTRIBUTED']] + sys.argv[1:]))")
  remote_cmd = command[len("--command="):].replace("cd ~/efficient", "cd .")
  remote_cmd = remote_cmd.replace(
      ".venv/bin/python -m experiments.train",
      f"{shlex.quote(sys.executable)} -c {shlex.quote(report)}")
  echoed = subprocess.run([BASH, "-c", remote_cmd], capture_output=True,
                          text=True, check=True, timeout=10).stdout
  assert json.loads(echoed) == ["1"] + TRAIN_ARGS

def test_repo_dir_is_quoted_but_tilde_expands():
  result = _run("--tpu", "t", "--zone", "z", "--repo_dir", "~/my runs",
                "--dry-run", "--", "--x=1")
  assert result.returncode == 0, result.stderr
  (ssh,) = _commands(result.stdout)
  command = next(a for a in ssh if a.startswith("--command="))
  assert command.startswith("--command=cd ~/my\\ runs && ")


def test_setup_copies_and_installs_on_every_worker():
  result = _run("--tpu", "pod", "--zone", "z", "--setup", "--dry-run", "--",
                *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert len(commands) == 4, result.stdout
  archive, scp, install, train = commands
  assert archive[:2] == ["git", "archive"] and "HEAD" in archive
  tarball = archive[archive.index("-o") + 1]
  assert scp[:5] == GCLOUD_SCP and "--worker=all" in scp
  assert "--zone=z" in scp and tarball in scp
  assert install[:6] == GCLOUD_SSH + ["pod"] and "--worker=all" in install
  words = _remote(install)
  script = " ".join(words)
  assert "python3 -m venv .venv" in script
  assert ".venv/bin/pip install -q -c requirements.lock -e ." in script
  lock = (REPO / "requirements.lock").read_text().splitlines()
  (jax_pin,) = [line for line in lock if line.startswith("jax==")]
  assert "jax[tpu]" + jax_pin[len("jax"):] in words
  assert train[:6] == GCLOUD_SSH + ["pod"] and "--worker=all" in train
  assert _remote_train_argv(train) == TRAIN_ARGS


def _copy_script(tmp_path, pyproject):
  """The script in a bare (non-git) tree with the given pyproject.toml."""
  (tmp_path / "scripts").mkdir()
  shutil.copy(SCRIPT, tmp_path / "scripts" / "tpu_pod.sh")
  (tmp_path / "pyproject.toml").write_text(pyproject)
  return tmp_path / "scripts" / "tpu_pod.sh"


def _jax_spec(script, cwd):
  result = _run("--tpu", "t", "--zone", "z", "--setup", "--dry-run", "--",
                "--x=1", script=script, cwd=cwd)
  assert result.returncode == 0, result.stderr
  (spec,) = [w for w in _remote(_commands(result.stdout)[2])
             if w.startswith("jax[tpu]")]
  return spec


def test_jax_version_falls_back_to_pyproject(tmp_path):
  ranged = tmp_path / "ranged"
  ranged.mkdir()
  script = _copy_script(ranged, 'dependencies = [\n  "jax>=0.10.2,<0.12",\n'
                        '  "jaxtyping>=0.3",\n]\n')
  assert _jax_spec(script, ranged) == "jax[tpu]==0.10.2"
  one_line = tmp_path / "one_line"
  one_line.mkdir()
  script = _copy_script(one_line, 'dependencies = ["numpy", "jax==0.11.0"]\n')
  assert _jax_spec(script, one_line) == "jax[tpu]==0.11.0"
  unpinned = tmp_path / "unpinned"
  unpinned.mkdir()
  script = _copy_script(unpinned, 'dependencies = ["jax", "jaxlib>=0.4"]\n')
  assert _jax_spec(script, unpinned) == "jax[tpu]"

def test_usage_errors():
  missing_tpu = _run("--zone", "z", "--dry-run", "--", *TRAIN_ARGS)
  assert missing_tpu.returncode == 2
  assert "usage:" in missing_tpu.stderr and "--tpu NAME" in missing_tpu.stderr
  assert missing_tpu.stdout == ""
  missing_zone = _run("--tpu", "t", "--dry-run", "--", *TRAIN_ARGS)
  assert missing_zone.returncode == 2 and "usage:" in missing_zone.stderr
  no_train_args = _run("--tpu", "t", "--zone", "z", "--dry-run")
  assert no_train_args.returncode == 2 and "usage:" in no_train_args.stderr
  no_value = _run("--tpu")
  assert no_value.returncode == 2 and "usage:" in no_value.stderr


def test_missing_gcloud_is_a_one_line_error(tmp_path):
  env = dict(os.environ, PATH=str(tmp_path))  # An empty dir: no gcloud.
  result = _run("--tpu", "t", "--zone", "z", "--", *TRAIN_ARGS, env=env)
  assert result.returncode != 0 and result.stdout == ""
  assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert "gcloud" in result.stderr
