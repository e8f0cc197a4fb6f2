"""IoU matching of anchors/proposals to ground truth, and the static balanced sampler.

`match` follows detectron2's Matcher; `subsample_labels` and `sample_indices` follow
detectron2's subsample_labels, with static shapes: the random subset is the top-k of
i.i.d. uniform priorities, which is a uniformly random subset of each category.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def match(
  iou_gxa,
  gt_valid_g,
  thresholds: Sequence[float] = (0.3, 0.7),
  labels: Sequence[int] = (0, -1, 1),
  allow_low_quality_matches: bool = True,
):
  """Matches every anchor (or proposal) to its best ground truth, detectron2's Matcher.

  Each anchor takes the ground truth of highest IoU (the first one on ties). Its label is
  labels[i] where thresholds[i-1] <= best IoU < thresholds[i] (with -inf and +inf at the
  ends): with the defaults, IoU < 0.3 is negative (0), [0.3, 0.7) ignored (-1) and >= 0.7
  positive (1). With allow_low_quality_matches, for every ground truth each anchor whose
  IoU equals that ground truth's highest IoU (ties included) is labelled 1, keeping its own
  best ground truth as the match (Faster R-CNN's RPN rule (i); detectron2's
  set_low_quality_matches_).

  One deliberate difference from detectron2: a ground truth whose highest IoU is 0 overlaps
  no anchor, and detectron2 would then label every anchor with IoU 0 to it (nearly all of
  them) positive; here such a ground truth yields no low-quality match.

  Args:
    iou_gxa: [G, A] IoU of G ground-truth boxes with A anchors/proposals (all >= 0).
    gt_valid_g: [G] bool; invalid (padding) ground truth is never matched.
    thresholds: increasing IoU thresholds.
    labels: len(thresholds) + 1 labels in {-1, 0, 1}.
    allow_low_quality_matches: apply the low-quality rule above.

  Returns:
    (matched_gt_a, labels_a): [A] int32 index of the matched ground truth (0 when there is
    no valid ground truth) and [A] int32 label. With no valid ground truth every anchor is
    labelled labels[0].

  Raises:
    ValueError: on inconsistent thresholds/labels or shapes.
  """
  thresholds = tuple(float(t) for t in thresholds)
  labels = tuple(int(label) for label in labels)
  if len(labels) != len(thresholds) + 1:
    raise ValueError(
      f"matching.match: need len(labels) == len(thresholds) + 1, got thresholds={thresholds} "
      f"and labels={labels} (config.model.rpn.iou_thresholds)."
    )
  if list(thresholds) != sorted(thresholds) or any(label not in (-1, 0, 1) for label in labels):
    raise ValueError(
      f"matching.match: thresholds must increase and labels be in {{-1, 0, 1}}, got "
      f"thresholds={thresholds}, labels={labels}."
    )
  iou_gxa = jnp.asarray(iou_gxa, jnp.float32)
  gt_valid_g = jnp.asarray(gt_valid_g, bool)
  if iou_gxa.ndim != 2 or gt_valid_g.shape != iou_gxa.shape[:1]:
    raise ValueError(
      f"matching.match: need iou_gxa [G, A] and gt_valid_g [G], got {iou_gxa.shape} and "
      f"{gt_valid_g.shape}."
    )
  num_anchors = iou_gxa.shape[1]
  if iou_gxa.shape[0] == 0:
    return (jnp.zeros((num_anchors,), jnp.int32), jnp.full((num_anchors,), labels[0], jnp.int32))

  # Invalid ground truth gets IoU -1: below every threshold and never anyone's best.
  quality_gxa = jnp.where(gt_valid_g[:, None], iou_gxa, -1.0)
  matched_gt_a = jnp.argmax(quality_gxa, axis=0).astype(jnp.int32)
  best_a = jnp.max(quality_gxa, axis=0)
  # Number of thresholds <= best IoU picks the interval [thresholds[i-1], thresholds[i]).
  interval_a = jnp.searchsorted(jnp.asarray(thresholds, jnp.float32), best_a, side="right")
  labels_a = jnp.asarray(labels, jnp.int32)[interval_a]

  if allow_low_quality_matches:
    best_per_gt_g = jnp.max(quality_gxa, axis=1)
    is_best_gxa = (quality_gxa == best_per_gt_g[:, None]) & (best_per_gt_g[:, None] > 0.0)
    labels_a = jnp.where(jnp.any(is_best_gxa, axis=0), 1, labels_a)
  return matched_gt_a, labels_a


def sample_indices(labels_a, num_samples: int, positive_fraction: float, key, valid_a=None):
  """Draws detectron2's balanced sample as a static list of indices, positives first.

  Positives are labels > 0 (1 from `match`, or a class id), negatives labels == 0, and
  labels < 0 are ignored. num_pos = min(#positives, int(num_samples * positive_fraction))
  positives and num_neg = min(#negatives, num_samples - num_pos) negatives are drawn
  uniformly at random without replacement.

  Args:
    labels_a: [A] int labels.
    num_samples: total sample size (static).
    positive_fraction: the largest fraction of positives (static).
    key: a PRNG key; vmap over keys for per-image samples.
    valid_a: optional [A] bool; invalid entries (e.g. zero-size padding boxes) are never
      sampled.

  Returns:
    (indices, positive, sampled): [num_samples] int32 indices into A, [num_samples] bool
    True for positives, [num_samples] bool False on padding slots (when fewer than
    num_samples can be drawn; their index is arbitrary but in range). Sampled positives
    come first, then sampled negatives, then padding.

  Raises:
    ValueError: on a bad num_samples or positive_fraction.
  """
  if num_samples < 0 or not 0.0 <= positive_fraction <= 1.0:
    raise ValueError(
      f"matching.sample_indices: need num_samples >= 0 and positive_fraction in [0, 1], got "
      f"{num_samples} and {positive_fraction} (config batch_size_per_image/positive_fraction)."
    )
  labels_a = jnp.asarray(labels_a)
  num_anchors = labels_a.shape[0]
  usable_a = jnp.ones((num_anchors,), bool) if valid_a is None else jnp.asarray(valid_a, bool)
  positive_a = (labels_a > 0) & usable_a
  negative_a = (labels_a == 0) & usable_a
  max_positives = min(int(num_samples * positive_fraction), num_anchors)
  # i.i.d. uniform priorities: the k largest among a category are a uniform random k-subset.
  priority_a = jax.random.uniform(key, (num_anchors,), jnp.float32)

  chosen_positive_a = jnp.zeros((num_anchors,), bool)
  if max_positives > 0:
    top_values, top_indices = jax.lax.top_k(
      jnp.where(positive_a, priority_a, -jnp.inf), max_positives
    )
    chosen_positive_a = chosen_positive_a.at[top_indices].set(top_values > -jnp.inf)

  # Chosen positives rank above every negative; the top num_samples therefore hold all of
  # them followed by num_samples - num_pos random negatives (fewer if there are not enough).
  combined_a = jnp.where(
    chosen_positive_a, 2.0 + priority_a, jnp.where(negative_a, priority_a, -jnp.inf)
  )
  take = min(num_samples, num_anchors)
  values, indices = jax.lax.top_k(combined_a, take)
  pad = num_samples - take
  if pad:
    values = jnp.concatenate([values, jnp.full((pad,), -jnp.inf, values.dtype)])
    indices = jnp.concatenate([indices, jnp.zeros((pad,), indices.dtype)])
  sampled = values > -jnp.inf
  positive = values >= 2.0
  return indices.astype(jnp.int32), positive, sampled


def subsample_labels(labels_a, num_samples: int, positive_fraction: float, key, valid_a=None):
  """detectron2's subsample_labels as boolean masks over the entries.

  Args:
    labels_a: [A] int labels; > 0 positive, 0 negative, < 0 ignored.
    num_samples: total sample size (static).
    positive_fraction: the largest fraction of positives (static).
    key: a PRNG key; vmap over keys for per-image samples.
    valid_a: optional [A] bool; invalid entries are never sampled.

  Returns:
    (positive_a, negative_a): [A] bool masks of the sampled positives and negatives, the
    same sample that `sample_indices` draws with the same key.
  """
  indices, positive, sampled = sample_indices(
    labels_a, num_samples, positive_fraction, key, valid_a
  )
  num_anchors = jnp.shape(labels_a)[0]
  # Padding slots scatter False (a no-op under max) so they cannot clear a real sample.
  positive_a = jnp.zeros((num_anchors,), bool).at[indices].max(sampled & positive)
  negative_a = jnp.zeros((num_anchors,), bool).at[indices].max(sampled & ~positive)
  return positive_a, negative_a
