"""scripts/results_table.py: one column per run, and --seeds pooling."""
import json
import statistics
import subprocess
import sys

from tests import conftest


def _write_run(root, folder, results, seed=None):
  path = root / folder
  path.mkdir(parents=True)
  (path / "results.json").write_text(json.dumps(results))
  if seed is not None:
    (path / "config.json").write_text(json.dumps({"seed": seed}))
  return str(path / "results.json")


def _table(*args):
  result = subprocess.run(
      [sys.executable, "scripts/results_table.py", *args],
      cwd=conftest.REPO, capture_output=True, text=True, check=True)
  cells = [[c.strip() for c in line.split("|")[1:-1]]
           for line in result.stdout.splitlines()[2:] if line.startswith("|")]
  return {row[0]: row[1:] for row in cells}, result.stdout


def test_seeds_pool_runs_of_one_variant_with_sample_std(tmp_path):
  fids = [14.86, 16.2, 15.1]
  paths = [
      _write_run(tmp_path / "a", "diffusion_dit", {"fid": fids[0], "n": 10}),
      _write_run(tmp_path / "b", "diffusion_dit_s1", {"fid": fids[1], "n": 10},
                 seed=1),
      # The config's seed wins over the folder's suffix.
      _write_run(tmp_path / "c", "diffusion_dit_s9", {"fid": fids[2], "n": 10},
                 seed=2),
      _write_run(tmp_path / "d", "diffusion_dimr", {"fid": 17.95, "n": 10}),
  ]
  rows, stdout = _table("--seeds", *paths)
  assert "| metric | diffusion_dit | diffusion_dimr |" in stdout
  assert rows["seeds"] == ["0, 1, 2", "0"]
  mean, std = statistics.fmean(fids), statistics.stdev(fids)
  assert rows["fid"] == [f"{mean:.4g} ± {std:.2g} (n=3)", "17.95"]
  assert abs(std - 0.7145) < 1e-4  # ddof=1, not the population std (0.583)
  assert rows["n"] == ["10 ± 0 (n=3)", "10"]


def test_seeds_refuse_the_same_seed_twice(tmp_path):
  paths = [_write_run(tmp_path / "a", "diffusion_dit", {"fid": 1.0}),
           _write_run(tmp_path / "b", "diffusion_dit", {"fid": 2.0}, seed=0)]
  result = subprocess.run(
      [sys.executable, "scripts/results_table.py", "--seeds", *paths],
      cwd=conftest.REPO, capture_output=True, text=True, check=False)
  assert result.returncode != 0 and "seed 0" in result.stderr


def test_one_column_per_run(tmp_path):
  paths = [_write_run(tmp_path / "a", "x", {"fid": 1.5, "name": "p"}),
           _write_run(tmp_path / "b", "y", {"fid": 2.25})]
  rows, _ = _table(*paths)
  assert rows["fid"] == ["1.5", "2.25"]
  assert rows["name"] == ["p", ""]


def test_seeds_plot_draws_a_png_and_names_unknown_metrics(tmp_path):
  paths = [_write_run(tmp_path / "a", "dit", {"fid": 15.0, "kid": 6.0}),
           _write_run(tmp_path / "b", "dit_s1", {"fid": 17.0, "kid": 9.0},
                      seed=1),
           _write_run(tmp_path / "c", "dimr", {"fid": 16.0})]
  png = tmp_path / "seeds.png"
  _, stdout = _table("--seeds", *paths, f"--plot={png}", "--metrics=fid,kid")
  assert f"wrote {png}" in stdout
  with open(png, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  def fails(*args):
    result = subprocess.run(
        [sys.executable, "scripts/results_table.py", *args],
        cwd=conftest.REPO, capture_output=True, text=True, check=False)
    assert result.returncode != 0
    return result.stderr

  assert "fd" in fails("--seeds", *paths, f"--plot={png}", "--metrics=fd")
  assert "--metrics" in fails("--seeds", *paths, f"--plot={png}")
  assert "--seeds" in fails(*paths, f"--plot={png}", "--metrics=fid")
