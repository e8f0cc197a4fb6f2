"""segrpn_jax.paper.figures on two tiny runs (SegRPN with RPN_mask, fusion roi+rpn, and SegRPN
without RPN_mask): what each figure draws against segrpn_jax.paper.analysis and NumPy recounts,
every figure as a PNG, and bad input as one readable error.

A figure needs a run's config, a checkpoint and event files, not a trained model: the runs are
written directly (initial weights saved as step 1, hand-written scalars), so the only compiles
are one initialisation and the three jitted functions the figures call.
"""

import jax
import matplotlib
import numpy as np
import pytest
from clu import metric_writers
from PIL import Image

from segrpn_jax import api, checkpointing
from segrpn_jax import state as state_lib
from segrpn_jax.paper import analysis, figures
from tests.test_analysis import _check_filtering, _decode, _recount
from tests.train_config import tiny_train_config

IMAGE = 1  # the evaluation image every figure draws


def _without_rpn_mask(tree):
  """A state's tree less every 'rpn_mask' entry (parameters and their optimizer state)."""
  if isinstance(tree, dict):
    return {k: _without_rpn_mask(v) for k, v in tree.items() if k != "rpn_mask"}
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # optax states are namedtuples
    return type(tree)(*(_without_rpn_mask(v) for v in tree))
  if isinstance(tree, tuple | list):
    return type(tree)(_without_rpn_mask(v) for v in tree)
  return tree


def _make_run(workdir: str, config, state, fg_rois: list[float]) -> str:
  """A workdir as training leaves it: config.json, `state` as the step-1 checkpoint, events."""
  checkpointing.save_config(workdir, config)
  with checkpointing.create_manager(workdir, config) as manager:
    checkpointing.save(manager, 1, state, force=True)
    manager.wait_until_finished()
  writer = metric_writers.create_default_writer(workdir)
  for step, value in enumerate(fg_rois, start=1):
    scalars = {"train/fg_rois_per_2000": value, "train/rpn_det/objectness": 0.7 / step}
    scalars["train/rpn_det/box"] = 0.2 / step
    if config.model.rpn_mask:
      scalars["train/rpn_mask/objectness"] = 0.6 / step
      scalars["train/rpn_mask/box"] = 0.3 / step
    writer.write_scalars(step, scalars)
  writer.close()
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """{'segrpn': (config, workdir), 'variant': (config, workdir)} sharing one TFDS folder.

  The variant's state is SegRPN's less RPN_mask (which restoring it with the variant's config
  checks, tree for tree and shape for shape).
  """
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  config = tiny_train_config(data_dir)
  variant = tiny_train_config(data_dir)
  variant.model.rpn_mask = False
  variant.model.fusion.train = variant.model.fusion.inference = "none"
  # As training creates the state (a raw key; the variables' initialisation jitted on its own):
  # that program is the tiny config's training runs' one, compiled once per test run.
  state = state_lib.init_state(config, jax.random.PRNGKey(0))
  reduced = state.replace(
    params=_without_rpn_mask(state.params), opt_state=_without_rpn_mask(state.opt_state)
  )
  a, b = (str(tmp_path_factory.mktemp(name)) for name in ("a", "b"))
  return {
    "segrpn": (config, _make_run(a, config, state, [120.0, 150.0])),
    "variant": (variant, _make_run(b, variant, reduced, [90.0, 80.0])),
  }


def _draw(figure: str, *workdirs: str, extra: tuple[str, ...] = ()) -> matplotlib.figure.Figure:
  argv = [f"--figure={figure}", "--output=unused.png", f"--image={IMAGE}", *extra]
  argv += [f"--workdir={workdir}" for workdir in workdirs]
  return figures.DRAW[figure](figures.parse_args(argv))


def _images(fig):
  return {ax.get_title(): ax.get_images()[0] for ax in fig.axes if ax.get_images()}


@pytest.fixture(scope="module")
def loaded(runs):
  config, workdir = runs["segrpn"]
  config, model, variables = analysis.load_run(workdir, "test")
  return config, model, variables, analysis.eval_example(config, IMAGE)


def test_proposal_filtering_figure_against_a_recount_from_decoded_proposals(runs, loaded):
  config, model, variables, batch = loaded
  out = jax.device_get(analysis.filtering_outputs(model, variables, batch["image"], "roi+rpn"))
  anchors = analysis.run_anchors(config)
  size = tuple(config.data.image_size)
  deltas, decoded = out["deltas"][0], out["decoded_boxes"][0]
  # Every anchor's proposal is its decoded, clipped box; the kept proposals are among them, as
  # many as training keeps (config.model.rpn.post_nms_topk_train).
  np.testing.assert_allclose(decoded, _decode(np.concatenate(anchors), deltas, size), rtol=1e-5,
                             atol=1e-4)  # fmt: skip
  proposals = {k: np.asarray(v[0]) for k, v in out["proposals"].items()}
  assert proposals["valid"].shape == (config.model.rpn.post_nms_topk_train,)
  kept = proposals["valid"]
  np.testing.assert_allclose(proposals["boxes"][kept], decoded[proposals["anchor_indices"][kept]],
                             rtol=1e-6, atol=1e-5)  # fmt: skip
  strides = tuple(config.model.anchor.strides)
  want = _recount(anchors, deltas, size, strides, proposals, batch["boxes"][0], batch["valid"][0])
  got = analysis.proposal_filtering(analysis.split_levels(decoded, anchors), size, strides,
                                    proposals, batch["boxes"][0], batch["valid"][0])  # fmt: skip
  _check_filtering(got, want)
  assert sum(r["num_before"] for r in got.values()) > 0
  # The figure draws exactly these sets and counts, with its legend.
  fig = _draw("proposal-filtering", runs["segrpn"][1])
  titles = [ax.get_title() for ax in fig.axes]
  for level, r in got.items():
    assert f"level {level}, after filtering: TP {r['num_tp']}, FP {r['num_fp']}, " \
      f"FN {r['num_fn']}" in titles  # fmt: skip
    ax = fig.axes[2 * (level - 2)]
    yellow = ax.get_images()[1].get_array()[..., 3] > 0
    np.testing.assert_array_equal(yellow, r["before"])
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
    "proposals at IoU > 0.5 with a ground truth, before filtering",
    "true positive (kept, IoU > 0.5)",
    "false positive (kept, IoU <= 0.5)",
    "ground truth",
  ]
  assert f"{config.model.rpn.post_nms_topk_train} proposals per image" in fig.get_suptitle()


def test_rpn_maps_figure_draws_three_probability_maps_per_level(runs, loaded):
  _, model, variables, batch = loaded
  fig = _draw("rpn-maps", runs["segrpn"][1])
  images = _images(fig)
  maps = analysis.rpn_map_images(
    jax.device_get(api.rpn_maps(model, variables, batch["image"])), "roi+rpn"
  )
  out = jax.device_get(analysis.filtering_outputs(model, variables, batch["image"], "roi+rpn"))
  flat = []
  for level, m in maps.items():
    assert m["objectness"].shape == (3, *m["features"].shape)
    for a, ratio in enumerate((0.5, 1.0, 2.0)):
      (image,) = [
        im for t, im in images.items() if t.startswith(f"{level} ROI prob., ratio {ratio:g} ")
      ]
      np.testing.assert_array_equal(image.get_array(), m["objectness"][a])
      assert image.get_cmap().name == "gray"
    (image,) = [im for t, im in images.items() if t.startswith(f"{level} RPN feature map")]
    np.testing.assert_array_equal(image.get_array(), m["features"])
    flat.append(np.moveaxis(m["objectness"], 0, -1).reshape(-1))
  # The maps are the probabilities that rank the anchors: in (level, y, x, ratio) order they
  # are the sigmoid of the fused logits of the proposal generation.
  np.testing.assert_allclose(np.concatenate(flat), jax.nn.sigmoid(out["logits"][0]), rtol=1e-5,
                             atol=1e-6)  # fmt: skip
  fig = _draw("rpn-features", runs["segrpn"][1])
  assert "FPN" in fig.get_suptitle()
  assert [im.get_array().shape for im in list(_images(fig).values())[1:]] == [
    m["features"].shape for m in maps.values()
  ]


def test_missed_objects_figure_on_segrpn_without_rpn_mask(runs):
  config, workdir = runs["variant"]
  fig = _draw("missed-objects", workdir, extra=("--min_side=8",))
  assert len(fig.axes) == 3  # the image, the class-agnostic and the semantic map
  assert fig.axes[1].get_title().startswith("class-agnostic segmentation")
  assert fig.axes[2].get_title().startswith("semantic segmentation")
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  _, model, variables = analysis.load_run(workdir, "test")
  batch = analysis.eval_example(config, IMAGE)
  out = jax.device_get(api.predict(model, variables, batch["image"], fusion="none"))
  det = out["detections"]
  r = analysis.missed_objects(batch["boxes"][0], batch["valid"][0], det["boxes"][0],
                              det["scores"][0], det["valid"][0], analysis.foreground_maps(out),
                              8.0)  # fmt: skip
  assert legend == [
    f"ground truth ({r['num_gt']})",
    f"detections, score >= 0.5 ({r['num_shown']})",
    f"large, missed, covered >= 50 % by class-agnostic or semantic ({r['num_recovered']} of "
    f"{r['num_large_missed']} large missed)",
  ]
  assert r["num_gt"] > 0 and r["num_large"] > 0
  title = fig.get_suptitle()
  assert "run: SegRPN without RPN_mask case1; inference fusion none" in title
  assert "sqrt(box area) >= 8 px at the 64x128 input" in title


def test_fg_rois_legend_names_each_run_by_setting_and_fusion(runs):
  fig = _draw("fg-rois", runs["segrpn"][1], runs["variant"][1])
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
    "SegRPN case1, fusion roi+rpn",
    "SegRPN without RPN_mask case1",
  ]
  np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), [90.0, 80.0])


def test_every_figure_writes_a_png(runs, tmp_path):
  segrpn, variant = runs["segrpn"][1], runs["variant"][1]
  for figure, workdirs in [
    ("rpn-features", [segrpn]),
    ("rpn-maps", [segrpn]),
    ("proposal-filtering", [segrpn]),
    ("loss-curves", [segrpn]),
    ("fg-rois", [segrpn, variant]),
    ("scale-division", [segrpn]),
    ("missed-objects", [variant]),
  ]:
    output = str(tmp_path / f"{figure}.png")
    argv = [f"--figure={figure}", f"--output={output}", f"--image={IMAGE}"]
    assert figures.run_command(argv + [f"--workdir={w}" for w in workdirs]) == 0
    with Image.open(output) as png:
      assert png.format == "PNG" and png.width > 100 and png.height > 100


def _error(capsys) -> str:
  """The one error block the command printed (and that it carries no traceback)."""
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "Traceback" not in err
  return err


def test_bad_input_is_one_readable_error(runs, tmp_path, capsys):
  config, workdir = runs["segrpn"]
  output = str(tmp_path / "x.png")
  run = figures.run_command
  assert run(["--figure=rpn-maps", f"--workdir={workdir}", f"--output={output}", "--image=4"]) == 2
  assert "image 4 is not in the validation split, which has 4 images" in _error(capsys)
  empty = str(tmp_path / "empty")
  checkpointing.save_config(empty, config)  # a run that never saved a checkpoint
  assert run(["--figure=missed-objects", f"--workdir={empty}", f"--output={output}"]) == 2
  assert "has no checkpoint" in _error(capsys)
  baseline = config.copy_and_resolve_references()
  baseline.model.class_agnostic = False
  checkpointing.save_config(str(tmp_path / "baseline"), baseline)
  argv = ["--figure=loss-curves", f"--output={output}"]
  assert run([*argv, f"--workdir={tmp_path / 'baseline'}"]) == 2
  assert "is a baseline run" in _error(capsys) and not (tmp_path / "x.png").exists()
  assert run([*argv, f"--workdir={runs['variant'][1]}"]) == 2
  assert "without RPN_mask (config.model.rpn_mask False)" in _error(capsys)
  argv = ["--figure=proposal-filtering", f"--output={output}", "--fusion=roi"]
  assert run([*argv, f"--workdir={runs['variant'][1]}"]) == 2
  assert "fusion = 'roi' fuses RPN_mask into RPN_det" in _error(capsys)
  assert run(["--figure=fg-rois", f"--workdir={empty}", f"--output={output}"]) == 2
  assert "no TensorBoard event files" in _error(capsys)
  assert run(["--figure=fg-rois", f"--workdir={tmp_path}", f"--output={output}"]) == 2
  assert "is not a training run (no config.json)" in _error(capsys)


def test_command_line_flags_and_their_errors(capsys):
  args = figures.parse_args(
    ["--figure=fg-rois", "--workdir=a", "--workdir=b", "--output=f.png", "--min_side=8.5"]
  )
  assert (args.figure, args.workdir, args.output) == ("fg-rois", ["a", "b"], "f.png")
  assert (args.image, args.split, args.fusion, args.min_side) == (0, None, None, 8.5)
  args = figures.parse_args(
    ["--figure=rpn-maps", "--workdir=a", "--output=f.png", "--image=2", "--split=train",
     "--fusion=roi+rpn"]
  )  # fmt: skip
  assert (args.image, args.split, args.fusion, args.min_side) == (2, "train", "roi+rpn", None)
  for argv, message in [
    (["--workdir=a", "--output=f.png"], "--figure is required: one of rpn-features, rpn-maps,"),
    (["--figure=rpn-maps", "--output=f.png"], "--workdir is required for the rpn-maps figure"),
    (["--figure=rpn-maps", "--workdir=a"], "--output is required for the rpn-maps figure"),
    (["--figure=rpn-map", "--workdir=a", "--output=f.png"], "value should be one of"),
    (["--figure=rpn-maps", "--workdir=a", "--output=f.png", "--fusion=both"],
     "flag --fusion=both: value should be one of <none|rpn|roi|roi+rpn>"),
    (["--figure=rpn-maps", "--workdir=a", "--output=f.png", "--image=one"],
     "flag --image=one: invalid literal for int()"),
    (["--figure=rpn-maps", "--workdir=a", "--output=f.png", "--scale=2"],
     "Unknown command line flag 'scale'"),
    (["rpn-maps", "--workdir=a", "--output=f.png"],
     "unexpected arguments ['rpn-maps']; every option is a --flag=value"),
    (["--figure=rpn-maps", "--workdir=a", "--workdir=b", "--output=f.png"],
     "rpn-maps draws one run, but --workdir was given 2 times"),
  ]:  # fmt: skip
    assert figures.run_command(argv) == 2, argv
    assert message in _error(capsys), argv
