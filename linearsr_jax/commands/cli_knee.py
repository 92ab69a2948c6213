"""`linearsr knee`: re-run ESGF knee detection on a finished (or running) stage's metrics.

  linearsr knee --workdir DIR                   # DIR/metrics.jsonl
  linearsr knee --workdir DIR --stage pretrain  # DIR/pretrain/metrics.jsonl
  linearsr knee --metrics_file run.jsonl --plot knee.png --patience 8

Prints the decision, the reason per metric, the checkpoint steps ESGF would keep and the steps
whose EMA snapshots it keeps. Exit
code 0 whether or not a knee is found (the answer is in the output), 2 on bad arguments.
"""

import itertools

from linearsr_jax import esgf, run_config, storage
from linearsr_jax.errors import UserError
from linearsr_jax.run.metric_keys import flow_loss_key
from linearsr_jax.run.run_dir import RunDir, StageDir, read_json


def add_arguments(parser):
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--workdir", type=storage.path,
                      help="run folder holding metrics.jsonl (or <stage>/metrics.jsonl)")
  source.add_argument("--metrics_file", type=storage.path, help="a metrics.jsonl file directly")
  parser.add_argument("--stage", help="stage sub-folder of --workdir (e.g. pretrain)")
  parser.add_argument("--plot", type=storage.path, help="write a PNG of the curves and the knee")
  # Unset options keep the run's own ESGF settings (its config.json), else the defaults.
  defaults = esgf.default_config()
  parser.add_argument(
      "--metrics", help=f"NAME:max|min pairs, comma-separated "
      f"(default: the run's, else {defaults.metrics})")
  parser.add_argument("--combine", choices=esgf.COMBINE_RULES,
                      help="fire when all / any of the metrics confirm")
  parser.add_argument("--patience", type=int, help="evaluations after the knee")
  parser.add_argument("--min_delta", type=float,
                      help="significant improvement, a fraction of the gain so far")
  parser.add_argument("--min_points", type=int, help="evaluations before deciding")


def run_esgf_config(workdir):
  """The `esgf` section of the run's resolved config.json, over the defaults."""
  config = esgf.default_config()
  saved = run_config.read(RunDir(workdir)) if workdir is not None else None
  if saved is not None:
    config.update(saved.esgf)
  return config


def metrics_path(workdir, stage=None, metrics_file=None):
  """The metrics.jsonl to read; a clear UserError when it is not there."""
  if metrics_file is not None:
    if not metrics_file.exists():
      raise UserError(f"metrics file {metrics_file} does not exist")
    return metrics_file
  if not workdir.is_dir():
    raise UserError(f"workdir {workdir} does not exist")
  folder = workdir / stage if stage else workdir
  path = StageDir(folder).metrics_jsonl
  if not path.exists():  # on object storage, a folder of segments (see run_dir)
    stages = sorted(p.name for p in workdir.iterdir() if StageDir(p).metrics_jsonl.exists())
    hint = f"; stages with metrics: {', '.join(stages)} (pass --stage)" if stages else ""
    raise UserError(f"no metrics.jsonl in {folder}{hint}")
  return path


def run(args) -> int:
  if args.stage and args.workdir is None:
    raise UserError("--stage needs --workdir")
  path = metrics_path(args.workdir, args.stage, args.metrics_file)
  config = run_esgf_config(args.workdir)
  given = {
      k: getattr(args, k)
      for k in ("metrics", "combine", "patience", "min_delta", "min_points")
      if getattr(args, k) is not None
  }
  config.update(given)
  esgf.validate_config(config)
  records, ignored = esgf.read_metrics_jsonl(path)
  # As the loop judged them: a run's first stage without its untrained step 0.
  origin = (read_json(StageDir(path.parent).stage_json) or {}).get("init_from", {})
  first_stage = bool(origin) and origin.get("stage") is None
  records = [(step, values) for step, values in records if esgf.judged(step, first_stage)]
  # The stage's experts: as many as it logged validation flow losses for.
  num_experts = next(
      e for e in itertools.count() if not any(flow_loss_key(e) in values for _, values in records))
  decision = esgf.detect(records, config, max(num_experts, 1))

  print(f"metrics: {path} ({len(records)} records" +
        (f", {ignored} unreadable lines ignored)" if ignored else ")"))
  if decision.fired:
    print(f"knee: step {decision.knee_step} (confidence {decision.confidence:.2f})")
  else:
    print(f"no knee yet (confidence {decision.confidence:.2f})")
  print(f"rule: {config.combine} of the metrics confirm; knee step = {config.knee_step}")
  for verdict in decision.metrics:
    mark = "confirmed" if verdict.confirmed else "not confirmed"
    print(f"  {verdict.name} ({verdict.direction}, {verdict.points} points): {mark}: "
          f"{verdict.reason}")
  for verdict in decision.expert_losses:
    state = "still improving" if esgf.still_improving(verdict, config) else "settled"
    print(f"  {verdict.name} (gate, {verdict.points} points): {state}: {verdict.reason}")
  missing = [
      n for n, _ in esgf.parse_metrics(config.metrics)
      if n not in {v.name for v in decision.metrics}
  ]
  if missing:
    print(f"  not logged: {', '.join(missing)}")
  keep = sorted(decision.keep_steps)
  if keep:
    print(f"checkpoints to keep: {', '.join(map(str, keep))}")
  branch = sorted(decision.branch_steps)
  if branch:  # every judged step until ESGF fires: any of them may still become the knee
    print("EMA snapshots to keep (steps ESGF may still branch from): " +
          (f"the knee, {branch[0]}" if decision.
           fired else f"all {len(branch)} judged steps, {branch[0]} to {branch[-1]}"))
  if args.plot:
    title = f"{args.stage or path.parent.name}: " + (f"knee at step {decision.knee_step}"
                                                     if decision.fired else "no knee yet")
    print(f"plot: {esgf.plot_curves(records, decision, config, args.plot, title)}")
  return 0
