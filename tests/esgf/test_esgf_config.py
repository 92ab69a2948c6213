"""Checks on the `esgf` config section."""

import pytest

from esgf_helpers import config
from linearsr_jax import esgf
from linearsr_jax.errors import UserError


@pytest.mark.parametrize("key, value", [("combine", "most"), ("smoothing.method", "spline"),
                                        ("min_points", 2), ("metrics", "val/psnr_y:up"),
                                        ("metrics", "a:max,a:min"), ("patience", 1)])
def test_bad_knobs_are_user_errors(key, value):
  cfg = config()
  section, _, name = key.rpartition(".")
  (cfg[section] if section else cfg)[name] = value
  with pytest.raises(UserError):
    esgf.KneeDetector(cfg)
