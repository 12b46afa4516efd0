"""scripts/tpu_pod.sh --dry-run prints the right, correctly quoted commands."""
import os
import shlex
import shutil
import subprocess

from tests import conftest

SCRIPT = conftest.REPO / "scripts" / "tpu_pod.sh"
TRAIN_ARGS = ["--config=configs/listops.py:softmax,smoke",
              "--config.note=hello world", "--workdir=gs://bucket/runs/a"]


def _run(*args, env=None):
  return subprocess.run([shutil.which("bash"), str(SCRIPT), *args], capture_output=True,
                        text=True, cwd=conftest.REPO, env=env, timeout=30,
                        check=False)


def _commands(stdout):
  return [shlex.split(line[2:]) for line in stdout.splitlines()
          if line.startswith("+ ")]


def _remote(argv):
  command = next(a for a in argv if a.startswith("--command="))
  return shlex.split(command[len("--command="):])


def test_dry_run_launches_on_every_worker_with_quoted_args():
  result = _run("--tpu", "my-v4-32", "--zone", "us-central2-b", "--project",
                "proj", "--dry-run", "--", *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  (ssh,) = _commands(result.stdout)
  assert ssh[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]
  assert "my-v4-32" in ssh and "--worker=all" in ssh
  assert "--zone=us-central2-b" in ssh and "--project=proj" in ssh
  remote = _remote(ssh)
  start = remote.index("EFFICIENT_DISTRIBUTED=1")
  assert remote[start + 1:start + 4] == [".venv/bin/python", "-m",
                                         "experiments.train"]
  assert remote[start + 4:] == TRAIN_ARGS  # Quoting survives the remote shell.


def test_setup_copies_and_installs_on_every_worker():
  result = _run("--tpu", "pod", "--zone", "z", "--setup", "--dry-run", "--",
                *TRAIN_ARGS)
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert commands[0][:2] == ["git", "archive"]
  scp = commands[1]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert "--worker=all" in scp
  install = " ".join(_remote(commands[2]))
  assert "pip install" in install and "jax[tpu]==" in install
  assert "--worker=all" in commands[2]
  assert _remote(commands[3])[-len(TRAIN_ARGS):] == TRAIN_ARGS


def test_usage_errors_and_missing_gcloud(tmp_path):
  missing = _run("--zone", "z", "--dry-run", "--", *TRAIN_ARGS)
  assert missing.returncode == 2 and "--tpu NAME" in missing.stderr
  no_args = _run("--tpu", "t", "--zone", "z", "--dry-run")
  assert no_args.returncode == 2
  for tool in ("dirname", "sed"):  # What the script needs before gcloud.
    (tmp_path / tool).symlink_to(shutil.which(tool))
  env = dict(os.environ, PATH=str(tmp_path))
  no_gcloud = _run("--tpu", "t", "--zone", "z", "--", *TRAIN_ARGS, env=env)
  assert no_gcloud.returncode == 1
  assert no_gcloud.stderr.strip().count("\n") == 0
  assert "gcloud" in no_gcloud.stderr
