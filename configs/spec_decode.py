r"""Speculative-decoding evaluation (experiments/spec_decode.py) of
SmolLM2-135M with the drafts of configs/draft.py.

  python -m experiments.spec_decode --config=configs/spec_decode.py:all \
      --workdir=runs/spec_decode

Variants: `plain` (our decoding against Hugging Face generate only), `ar`,
`pard`, `eda`, `all` (the three), `python` (SmolLM2 fine-tuned on Python,
Python prompts: unadapted AR / EDA drafts against EDA adapted (private
expert only) and fully retrained), `python_ablation` (same target and
prompts: stage 2 on randomly selected rows against the Mahalanobis-selected
ones, and a second seed of stage 2 and of full retraining). Draft runs
are read from `runs/draft_*` (the `_draft(...)` lines below; command-line
flags cannot reach entries of the `drafts` list, so edit them to decode
other runs). Prompts are
the first 64 tokens of held-out chunks of draft_text's test split.

`smoke` runs the random byte-level tiny target with itself and a random
model as drafts (no trained runs needed; plumbing and exactness only):

  python -m experiments.spec_decode --config=configs/spec_decode.py:all,smoke \
      --workdir=/tmp/spec_smoke
"""
import ml_collections
from ml_collections import config_dict

VARIANTS = ("plain", "ar", "pard", "eda", "all", "python", "python_ablation")


def _draft(name, kind, source, num_draft):
  return ml_collections.ConfigDict(dict(name=name, kind=kind, source=source,
                                        num_draft=num_draft))


def get_config(arg=None):
  """arg = "<variant>[,smoke]" (variants: module docstring)."""
  from configs import common  # pylint: disable=g-import-not-at-top
  arg = common.parse_arg(arg, variant="all", smoke=False)
  if arg.variant not in VARIANTS:
    raise ValueError(f"config arg variant={arg.variant!r} is not one of "
                     f"{VARIANTS}")
  c = ml_collections.ConfigDict()
  c.target = "smollm2"
  c.seed = 0
  c.data = dict(name="draft_text", builder_config="prose_regen",
                data_dir=config_dict.placeholder(str), prepare=False)
  c.num_prompts = 16
  c.prompt_len = 64
  c.max_new = 128
  c.temperatures = (0.0,)
  c.top_p = 1.0
  c.repeats = 3
  c.measure_bandwidth = True
  c.hf_baseline = True
  c.hf_prompts = 4
  drafts = []
  if arg.variant in ("ar", "all"):
    drafts += [_draft(f"ar_k{k}", "ar", "runs/draft_ar", k) for k in (2, 4)]
  if arg.variant in ("pard", "all"):
    drafts += [_draft(f"pard_k{k}", "pard", "runs/draft_pard", k)
               for k in (2, 4, 6)]
  if arg.variant in ("eda", "all"):
    drafts += [_draft(f"eda_k{k}", "eda", "runs/draft_eda", k) for k in (3,)]
  if arg.variant in ("python", "python_ablation"):
    # The fine-tuned target, held-out Python.
    c.target = "run:runs/target_python"
    c.data.builder_config = "python_regen"
  if arg.variant == "python":
    drafts = [_draft("ar_unadapted_k4", "ar", "runs/draft_ar", 4),
              _draft("eda_unadapted_k3", "eda", "runs/draft_eda", 3),
              _draft("eda_adapted_k3", "eda", "runs/draft_eda_python", 3),
              _draft("eda_full_k3", "eda", "runs/draft_eda_python_full", 3)]
  if arg.variant == "python_ablation":  # configs/draft.py's commands
    drafts = [_draft("eda_adapted_k3", "eda", "runs/draft_eda_python", 3),
              _draft("eda_adapted_random_k3", "eda",
                     "runs/draft_eda_python_random", 3),
              _draft("eda_adapted_seed1_k3", "eda",
                     "runs/draft_eda_python_s1", 3),
              _draft("eda_full_k3", "eda", "runs/draft_eda_python_full", 3),
              _draft("eda_full_seed1_k3", "eda",
                     "runs/draft_eda_python_full_s1", 3)]
  c.drafts = drafts
  if arg.smoke:
    c.target = "tiny"
    c.data.builder_config = "smoke"
    c.data.prepare = True
    c.num_prompts, c.prompt_len, c.max_new, c.repeats = 2, 8, 12, 1
    c.temperatures = (0.0, 1.0)
    c.measure_bandwidth = False
    c.hf_baseline = False
    c.drafts = [_draft("self_ar_k3", "ar", "self", 3),
                _draft("random_ar_k2", "ar", "random", 2),
                _draft("self_pard_k3", "pard", "self", 3),
                _draft("random_eda_k2", "eda", "random", 2)]
  return c
