"""`load_trained` reads from a training checkpoint only the params tree it returns (EMA by
default, the raw params with ema=False): not the other copy, the optimizer's moments or the
counters, which a big model could not afford to hold on one device just to drop them.

Proved on the shared tiny run (tests/trained_run.py) by spying on Orbax's type handlers, which
every saved array passes through when it is read from disk, and on TensorStore's byte count."""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts

from linearsr_jax.diffusion import experts
from linearsr_jax.inference.trained import load_trained
from bench.run_outcome import saved_state
from trained_run import trained_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  return trained_run(tmp_path_factory)


def _handler_classes(cls=ocp.type_handlers.TypeHandler):
  for sub in cls.__subclasses__():
    if "deserialize" in vars(sub):
      yield sub
    yield from _handler_classes(sub)


@pytest.fixture
def reads(monkeypatch):
  """The Orbax names (`opt_state.1.0.mu.dit…`) of the saved leaves read from disk from now on."""
  names = set()
  for cls in set(_handler_classes()):

    def spy(self, infos, args=None, _original=vars(cls)["deserialize"]):  # noqa: B008
      names.update(info.name for info in infos)
      return _original(self, infos, args)

    monkeypatch.setattr(cls, "deserialize", spy)
  return names


def _bytes_read():
  metric = ts.experimental_collect_matching_metrics("/tensorstore/kvstore/file/bytes_read")
  return sum(v["value"] for m in metric for v in m["values"])


@pytest.mark.slow
@pytest.mark.parametrize("ema, name", [(True, "ema_params"), (False, "params")])
def test_load_trained_reads_only_the_params_it_returns(run_dir, reads, ema, name):
  before = _bytes_read()
  trained = load_trained(run_dir, stage="moe", ema=ema)
  partial_bytes = _bytes_read() - before
  partial_reads = set(reads)
  reads.clear()

  before = _bytes_read()
  state = saved_state(run_dir / "moe" / "checkpoints" / str(trained.step) / "state")
  full_bytes = _bytes_read() - before
  # The spy sees every leaf of a full restore, so it would have seen the optimizer's.
  assert any(n.startswith("opt_state.") for n in reads), sorted(reads)[:5]
  assert any(n.startswith("ema_params.") for n in reads) and any(
      n.startswith("params.") for n in reads)

  # Exactly the wanted tree's leaves were read, nothing else.
  assert partial_reads == {n for n in reads if n.startswith(name + ".")}, sorted(partial_reads)
  assert len(partial_reads) == len(jax.tree.leaves(trained.params)) > 0
  # The state holds params, EMA params and Adam's two moments: a quarter of it plus metadata.
  assert 0 < partial_bytes < full_bytes / 2, (partial_bytes, full_bytes)

  # The same values as a full restore, every array on this machine's first device.
  want = state[name]
  assert jax.tree.structure(trained.params) == jax.tree.structure(want)
  for (path, got), expected in zip(jax.tree.leaves_with_path(trained.params),
                                   jax.tree.leaves(want)):
    assert got.devices() == {jax.local_devices()[0]}, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(got), expected, err_msg=jax.tree_util.keystr(path))
  assert trained.num_experts == 4
  # ema and raw params differ after training, so a swapped tree would not pass.
  other = state["params" if ema else "ema_params"]
  assert any(not np.array_equal(np.asarray(a), b)
             for a, b in zip(jax.tree.leaves(trained.params), jax.tree.leaves(other)))


@pytest.mark.slow
def test_a_config_json_of_older_code_with_the_experts_number_loads_and_the_params_count(
    run_dir, tmp_path):
  """Older code wrote diffusion.experts.num_experts (the default 1, which training overwrote):
  the run still loads, and its 4 experts come from the params, split at the paper's SNR
  boundaries."""
  old = tmp_path / "old_run"
  shutil.copytree(run_dir, old)
  config = json.loads((old / "config.json").read_text())
  assert "num_experts" not in config["diffusion"]["experts"]
  config["diffusion"]["experts"]["num_experts"] = 1
  (old / "config.json").write_text(json.dumps(config))
  trained = load_trained(old, stage="moe")
  assert trained.num_experts == 4 and "num_experts" not in trained.diffusion.experts
  np.testing.assert_allclose(
      experts.boundaries_from_config(trained.diffusion.experts, trained.num_experts),
      [0.223, 0.875, 0.939], atol=1e-3)
