"""The knee plot."""

from esgf_helpers import config, two_metric_records
from linearsr_jax import esgf
from linearsr_jax.esgf.plot import curves_figure


def red_pixels(png):
  from matplotlib.image import imread
  img = imread(png)[..., :3]
  return int(((img[..., 0] > 0.8) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)).sum())


def green_pixels(png):
  from matplotlib.image import imread
  img = imread(png)[..., :3]
  return int(((img[..., 1] > 0.45) & (img[..., 0] < 0.3) & (img[..., 2] < 0.3)).sum())


def test_plot_marks_the_knee_and_the_baseline(tmp_path):
  _, records = two_metric_records(400, 400, 60)
  cfg = config("val/psnr_y:max,val/lpips_alex:min")
  fired = esgf.detect(records, cfg)
  early = esgf.detect(records[:12], cfg)
  assert fired.fired and not early.fired
  with_base = records + [(0, {"val/bicubic_psnr_y": 24.5, "val/bicubic_lpips": 0.4})]
  esgf.plot_curves(with_base, fired, cfg, tmp_path / "fired.png")
  esgf.plot_curves(records[:12], early, cfg, tmp_path / "early.png")
  assert red_pixels(tmp_path / "fired.png") > 200 and red_pixels(tmp_path / "early.png") == 0
  assert green_pixels(tmp_path / "fired.png") > 200 and green_pixels(tmp_path / "early.png") == 0


def test_a_long_title_fits_in_the_figure():
  """Wrapped inside the figure's edges, above the top panel rather than over it."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  _, records = two_metric_records(400, 400, 60)
  cfg = config("val/psnr_y:max,val/lpips_alex:min")
  title = "stage pretrain_on_a_long_dataset_name: " + "ESGF knee at step 1234, " * 8
  fig = curves_figure(records, esgf.detect(records, cfg), cfg, title)
  renderer = FigureCanvasAgg(fig).get_renderer()
  fig.draw(renderer)
  [text] = [t for t in fig.texts if t.get_text() == title]
  box, page = text.get_window_extent(renderer), fig.bbox
  assert page.x0 <= box.x0 < box.x1 <= page.x1 and page.y0 <= box.y0 < box.y1 <= page.y1, (box,
                                                                                           page)
  assert box.y0 > max(ax.get_tightbbox(renderer).y1 for ax in fig.axes)


def test_the_experts_losses_get_one_panel_with_a_curve_each(tmp_path):
  _, records = two_metric_records(400, 400, 30)
  records = [(step,
              dict(
                  values, **{
                      f"val/flow_loss_expert{e}": 0.1 + 0.01 * e + 1e-3 * (step % 300 == 0)
                      for e in range(4)
                  }))
             for step, values in records]
  cfg = config("val/psnr_y:max,val/lpips_alex:min")
  fig = curves_figure(records, esgf.detect(records, cfg, num_experts=4), cfg)
  assert len(fig.axes) == 3
  labels = [t.get_text() for t in fig.axes[-1].get_legend().get_texts()]
  assert [l.split(":")[0] for l in labels] == ["expert0", "expert1", "expert2", "expert3"]
  assert len(curves_figure(records, esgf.detect(records, cfg), cfg).axes) == 2  # one model
