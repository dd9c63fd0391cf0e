"""Dataset cartography for generation (Swayamdipta et al., 2020): confidence, variability, regions, noisy flags.

Pure functions first (per-epoch losses in, map coordinates out), then :class:`DataMapCallback`, which reads the
tracker's per-epoch statistics and visit history (no extra forward pass), ranks likely wrong answers by a noise
score from :mod:`~sft_callbacks.policies.noise`, optionally down-weights flagged samples after a number of
epochs (a denoising curriculum) and logs what it did; :func:`plot_data_map` draws the map.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..engine.callbacks import SamplingPolicyCallback
from ..engine.config import CallbackConfig
from ..engine.session import PolicyContext
from .noise import (
    DEFAULT_NOISE_SCORE,
    NOISE_SCORES,
    estimate_noise_rate,
    flag_by_score,
    history_scores,
    noise_rate_decision,
    window_of_trust,
)

REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")


def epoch_confidences(epoch_loss: np.ndarray) -> np.ndarray:
    """Per-epoch confidence ``exp(-mean token NLL)``: the geometric-mean probability of the target tokens.

    ``epoch_loss`` is ``(n_samples, n_epochs)`` with NaN where a sample was not seen in an epoch.

    Example:
        >>> epoch_confidences(np.array([[0.0, np.log(2)]])).round(3).tolist()
        [[1.0, 0.5]]
    """
    return np.exp(-np.asarray(epoch_loss, dtype=np.float64))


def data_map_coordinates(epoch_loss: np.ndarray, learned_threshold: float = 0.5) -> dict[str, np.ndarray]:
    """Confidence (mean over epochs), variability (std over epochs), epochs seen and forgetting events.

    Variability is NaN for a sample seen in fewer than 2 epochs: one reading has no spread, and placing it at
    variability 0 would put it in a region the map knows nothing about.

    A forgetting event is a move from learned (epoch confidence >= ``learned_threshold``) to not learned between
    two consecutive epochs in which the sample was seen (Toneva et al., 2019, at epoch granularity).

    Example:
        >>> c = data_map_coordinates(np.array([[0.1, 0.1], [0.1, 1.5], [np.nan, 0.2]]))
        >>> c["epochs_seen"].tolist(), c["forgetting_events"].tolist()
        ([2, 2, 1], [0, 1, 0])
        >>> bool(np.isnan(c["variability"][2]))  # one epoch: not placed
        True
    """
    conf = epoch_confidences(epoch_loss)
    seen = np.isfinite(conf)
    n_seen = seen.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_seen > 0, np.nansum(conf, 1) / np.maximum(n_seen, 1), np.nan)
        var = np.where(n_seen > 1, np.nansum((conf - mean[:, None]) ** 2, 1) / np.maximum(n_seen, 1), np.nan)
    forgetting = np.zeros(conf.shape[0], dtype=np.int64)
    previous = np.full(conf.shape[0], np.nan)
    for e in range(conf.shape[1]):
        current = conf[:, e]
        has = np.isfinite(current)
        forgetting += (has & np.isfinite(previous) & (previous >= learned_threshold) & (current < learned_threshold))
        previous = np.where(has, current, previous)
    return {"confidence": mean, "variability": np.sqrt(var), "epochs_seen": n_seen, "forgetting_events": forgetting}


def assign_regions(
    confidence: np.ndarray, variability: np.ndarray, *, confidence_split: float | None = None,
    variability_split: float | None = None,
) -> np.ndarray:
    """Region of each sample: ``ambiguous`` (variability above the split), else ``easy-to-learn`` (confidence above
    the split) or ``hard-to-learn``; ``""`` where the sample has no coordinates. Splits default to the medians.

    Example:
        >>> assign_regions(np.array([0.9, 0.1, 0.5]), np.array([0.0, 0.0, 0.4])).tolist()
        ['easy-to-learn', 'hard-to-learn', 'ambiguous']
    """
    confidence = np.asarray(confidence, dtype=np.float64)
    variability = np.asarray(variability, dtype=np.float64)
    ok = np.isfinite(confidence) & np.isfinite(variability)
    if not ok.any():
        return np.full(confidence.shape, "", dtype=object)
    c_split = np.median(confidence[ok]) if confidence_split is None else confidence_split
    v_split = np.median(variability[ok]) if variability_split is None else variability_split
    out = np.full(confidence.shape, "", dtype=object)
    out[ok & (variability > v_split)] = "ambiguous"
    low_var = ok & (variability <= v_split)
    out[low_var & (confidence > c_split)] = "easy-to-learn"
    out[low_var & (confidence <= c_split)] = "hard-to-learn"
    return out


def flag_noisy(
    confidence: np.ndarray,
    variability: np.ndarray,
    epochs_seen: np.ndarray,
    *,
    min_epochs: int = 2,
    rate: float | None = None,
    confidence_quantile: float = 0.25,
    variability_quantile: float = 0.5,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """Samples that stay low-confidence with low variability: likely mislabeled (hard-to-learn corner of the map).

    Among samples seen in at least ``min_epochs`` epochs: with ``rate`` (the expected noise rate) the ``rate``
    fraction with the lowest confidence whose variability is at most the ``variability_quantile``; otherwise
    those below the ``confidence_quantile`` of confidence and at most that variability quantile.

    With ``groups`` (one label per sample, e.g. the domain) the rule runs within each group: a domain where
    every answer is hard (multi-digit arithmetic next to yes/no labels) no longer takes every flag.

    Example:
        >>> flag_noisy(np.array([0.9, 0.05, 0.8, 0.1]), np.zeros(4), np.full(4, 3), rate=0.5).tolist()
        [False, True, False, True]
        >>> flag_noisy(np.array([0.9, 0.05, 0.8, 0.1]), np.zeros(4), np.full(4, 3), rate=0.5,
        ...            groups=np.array(["a", "a", "b", "b"])).tolist()
        [False, True, False, True]
        >>> flag_noisy(np.array([0.9, 0.8, 0.05, 0.1]), np.zeros(4), np.full(4, 3), rate=0.5,
        ...            groups=np.array(["a", "a", "b", "b"])).tolist()  # one flag per group
        [False, True, True, False]
    """
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != np.shape(confidence):
            raise ValueError(f"groups has {groups.size} labels for {np.size(confidence)} samples")
        flags = np.zeros(np.shape(confidence), dtype=bool)
        for g in np.unique(groups):
            at = np.flatnonzero(groups == g)
            flags[at] = flag_noisy(
                np.asarray(confidence)[at], np.asarray(variability)[at], np.asarray(epochs_seen)[at],
                min_epochs=min_epochs, rate=rate, confidence_quantile=confidence_quantile,
                variability_quantile=variability_quantile,
            )
        return flags
    confidence = np.asarray(confidence, dtype=np.float64)
    variability = np.asarray(variability, dtype=np.float64)
    eligible = (np.asarray(epochs_seen) >= min_epochs) & np.isfinite(confidence) & np.isfinite(variability)
    flags = np.zeros(confidence.shape, dtype=bool)
    if not eligible.any():
        return flags
    v_cut = np.quantile(variability[eligible], variability_quantile) if variability_quantile < 1 else np.inf
    candidates = eligible & (variability <= v_cut + 1e-12)
    if rate is not None:
        k = int(round(rate * eligible.sum()))
        order = np.flatnonzero(candidates)[np.argsort(confidence[candidates], kind="stable")]
        flags[order[:k]] = True
        return flags
    c_cut = np.quantile(confidence[eligible], confidence_quantile)
    return candidates & (confidence <= c_cut)


#: The data map's columns on each annotated row (their meanings: sft_callbacks.engine.columns).
DATA_MAP_COLUMNS = ("confidence", "variability", "correctness", "forgetting_events", "epochs_seen", "region",
                    "noise_score", "flag_noisy")


@dataclass(frozen=True, kw_only=True)
class DataMapConfig(CallbackConfig):
    """Options of :class:`DataMapCallback` (see its Args), checked when built.

    Example:
        >>> DataMapConfig(noise_rate=0.2).min_epochs
        2
    """

    min_epochs: int = 2
    noise_rate: float | None = None
    noise_score: str = DEFAULT_NOISE_SCORE
    downweight_after_epochs: int | None = None
    downweight: float = 0.1
    group_column: str | None = None
    fallback_rate: float = 0.1

    def __post_init__(self):
        self.require(self.min_epochs >= 1, "min_epochs must be >= 1", self.min_epochs)
        self.require(0 <= self.fallback_rate < 1, "fallback_rate must be in [0, 1)", self.fallback_rate)
        self.require(self.noise_rate is None or 0 < self.noise_rate < 1,
                     "noise_rate must be in (0, 1), or None to estimate it", self.noise_rate)
        self.require(self.noise_score in NOISE_SCORES, f"noise_score must be one of {sorted(NOISE_SCORES)}",
                     self.noise_score)
        self.require(self.downweight_after_epochs is None or self.downweight_after_epochs >= 1,
                     "downweight_after_epochs must be >= 1", self.downweight_after_epochs)
        self.require(0 <= self.downweight <= 1, "downweight must be in [0, 1]", self.downweight)


class DataMapCallback(SamplingPolicyCallback):
    """A [`~transformers.TrainerCallback`] that maps every training sample by confidence and variability across
    epochs (dataset cartography) and flags likely wrong answers, from the training forward passes themselves.

    Adapted to generation: a sample's confidence in an epoch is the geometric-mean probability of its target
    tokens, ``exp(-mean NLL)``, from the per-epoch statistics the tracker already keeps; confidence is its mean
    over epochs, variability its standard deviation (Swayamdipta et al., 2020, "Dataset Cartography"),
    correctness the mean token accuracy, and forgetting events count learned -> not learned transitions
    (Toneva et al., 2019). A sample seen in fewer than 2 epochs has no variability: it is not placed on the map
    (no region), and is not flagged.

    Wrong answers are ranked by ``noise_score`` (see :data:`~sft_callbacks.policies.noise.NOISE_SCORES`). The
    default, ``"confidence_after_burn_in"``, averages each sample's confidence over the window of the run in which
    a low confidence means a wrong answer: after the model has learnt the task (the clean-looking samples'
    accuracy saturates), before it memorises the wrong answers; both ends are read from the run
    (:func:`~sft_callbacks.policies.noise.window_of_trust`). It was chosen on the SmolLM2 benchmark
    (BENCHMARKS.md, "Finding wrong answers"). The ``noise_rate`` highest-scoring samples are flagged
    ``flag_noisy`` (within each group with ``group_column``); without a rate, it is estimated per group from a
    two-component mixture of the scores, which also gives each sample's ``noise_probability`` and the flags'
    expected precision (:attr:`noise_report`, and the ``sft/data_map/*`` logs). A group's estimate is used only
    when it can be trusted: at most half the rows, and flags the mixture itself expects to be wrong answers at
    least 70% of the time; otherwise the group's flags are its ``fallback_rate`` most suspicious rows at most, and
    the report says why (:func:`~sft_callbacks.policies.noise.noise_rate_decision`, shared with
    :class:`~sft_callbacks.policies.denoising.DenoisingCallback`; where the model knows a domain least the raw
    estimate ran at 0.4-0.6 against a true 0.17).

    With ``downweight_after_epochs`` set, flagged samples are drawn ``downweight`` times as often from then on
    (a denoising curriculum; the flags are recomputed at every epoch end).

    Per-step cost: none (it reads statistics at epoch ends, O(n * epochs + visits)). Memory: the tracker's visit
    log, 15 bytes per visit.

    Args:
        min_epochs (`int`, defaults to 2): epochs a sample must have been seen in before it can be flagged.
        noise_rate (`float`, *optional*): expected fraction of wrong answers; flags that many highest-scoring
            samples. Without it the rate is estimated from the scores, per group.
        fallback_rate (`float`, defaults to 0.1): the most a group flags when its estimated rate cannot be trusted.
        noise_score (`str`, defaults to ``"confidence_after_burn_in"``): the ranking, one of ``NOISE_SCORES``.
        downweight_after_epochs (`int`, *optional*): from this epoch on, down-weight flagged samples.
        downweight (`float`, defaults to 0.1): sampling weight of a flagged sample relative to 1 (0 drops it).
        group_column (`str`, *optional*): flag within each group of this training-dataset column (e.g. the
            domain), so that a domain whose every row is hard does not take every flag; recommended for
            multi-domain data (see BENCHMARKS.md, noise).

    Example:
        >>> data_map = DataMapCallback(group_column="domain")  # doctest: +SKIP
        >>> trainer = SFTTrainer(..., args=SFTConfig(num_train_epochs=3, ...), callbacks=[data_map])  # doctest: +SKIP
        >>> trainer.train()  # doctest: +SKIP
        >>> frame = data_map.data_map()  # indexed by your dataset's row  # doctest: +SKIP
        >>> frame[frame.flag_noisy].sort_values("noise_score")  # doctest: +SKIP
        >>> data_map.noise_report["expected_precision"]  # doctest: +SKIP
        >>> plot_data_map(frame, "data_map.png")  # doctest: +SKIP
    """

    config_class = DataMapConfig

    def __init__(self, config: DataMapConfig | None = None, /, **options):
        super().__init__(config, **options)
        self._uid_groups: np.ndarray | None = None
        self._group_names: list[str] = []
        #: What the last flagging did: the score, its window of steps, and per group the rate (given or
        #: estimated), the flags and their expected precision (the mean noise probability of the flagged).
        self.noise_report: dict = {}
        # Only a sampling policy when it down-weights; otherwise it leaves the sampler alone.
        self.needs_sampler = self.config.downweight_after_epochs is not None
        self._metrics: dict[str, float] = {}

    def required_columns(self) -> list[str]:
        return [self.config.group_column] if self.config.group_column else []

    def on_train_begin(self, args, state, control, **kwargs):
        self._uid_groups = None  # the dataset may differ from a previous train()
        super().on_train_begin(args, state, control, **kwargs)

    # -- map --------------------------------------------------------------------------------------------
    def _groups(self) -> np.ndarray | None:
        if self.config.group_column is None:
            return None
        if self._uid_groups is None:
            from .groups import group_ids, uid_groups

            index = self.session.tracker.index
            ids, self._group_names = group_ids(self.session.columns[self.config.group_column])
            self._uid_groups = uid_groups(ids, index.seq_uid, index.seq_row, len(index.keys))
        return self._uid_groups

    def _per_sample(self) -> dict[str, np.ndarray]:
        tracker = self.session.tracker
        stats = tracker.stats
        coords = data_map_coordinates(stats.epoch_loss_matrix())
        with np.errstate(invalid="ignore", divide="ignore"):
            coords["correctness"] = np.where(stats.times_seen > 0, stats.acc_sum / stats.times_seen, np.nan)
        coords["region"] = assign_regions(coords["confidence"], coords["variability"])
        n = stats.size
        (start, end), scores = self._history_scores()
        score = scores[self.config.noise_score]
        eligible = (coords["epochs_seen"] >= self.config.min_epochs) & np.isfinite(score)
        groups = self._groups()
        labels = np.zeros(n, dtype=np.int64) if groups is None else groups
        flags = np.zeros(n, dtype=bool)
        probability = np.full(n, np.nan)
        report = {"noise_score": self.config.noise_score, "window": [start, end], "groups": {}}
        for g in np.unique(labels):
            at = np.flatnonzero((labels == g) & eligible)
            if not at.size:
                continue
            estimate = estimate_noise_rate(score[at])
            post = estimate[1]
            # The estimated rate only where its own flags would mostly be wrong answers; else the few most
            # suspicious rows (the rate is unreliable where the model knows the task least).
            decision = noise_rate_decision(score[at], given=self.config.noise_rate,
                                           fallback_rate=self.config.fallback_rate, estimate=estimate)
            rate = decision["rate"]
            chosen = flag_by_score(score[at], rate)
            flags[at] = chosen
            probability[at] = post
            name = self._group_names[g] if groups is not None and 0 <= g < len(self._group_names) else "all"
            report["groups"][name] = {
                "eligible": int(at.size), "rate": float(rate), "rate_given": self.config.noise_rate is not None,
                "rate_source": decision["source"], **({"reason": decision["reason"]} if "reason" in decision else {}),
                "estimated_rate": float(decision["estimated"]), "flagged": int(chosen.sum()),
                "expected_precision": float(post[chosen].mean()) if chosen.any() else float("nan"),
            }
        report["flagged"] = int(flags.sum())
        report["eligible"] = int(eligible.sum())
        report["expected_precision"] = float(np.mean(probability[flags])) if flags.any() else float("nan")
        self.noise_report = report
        coords["noise_score"] = np.where(np.isfinite(score), score, np.nan)
        coords["noise_probability"] = probability
        coords["flag_noisy"] = flags
        return coords

    def data_map(self) -> pd.DataFrame:
        """The map, indexed by your training-dataset row: ``confidence``, ``variability`` (NaN for rows seen in
        fewer than 2 epochs), ``correctness``, ``forgetting_events``, ``epochs_seen``, ``region`` (empty where not
        placed), ``noise_score``, ``noise_probability`` (NaN where not eligible), ``flag_noisy`` (rows TRL dropped:
        NaN / empty region / not flagged)."""
        return self._by_row(self._per_sample())

    def row_annotations(self) -> pd.DataFrame | None:
        """The map's columns that ``to_dataset`` and :func:`~sft_callbacks.curate` carry (see :meth:`data_map`)."""
        if self.session.tracker.index.packed:
            return None
        return self.data_map()[list(DATA_MAP_COLUMNS)]

    def noise_scores(self) -> pd.DataFrame:
        """Every score of :data:`~sft_callbacks.policies.noise.NOISE_SCORES` for each training row (higher = more
        likely a wrong answer; NaN: no visit to read), over the window the last flagging used; to compare them on
        data whose wrong answers you know.

        Example:
            >>> data_map.noise_scores().corrwith(my_dataset.to_pandas()["is_wrong"])  # doctest: +SKIP
        """
        return self._by_row(self._history_scores()[1])

    def _history_scores(self) -> tuple[tuple[int, int | None], dict[str, np.ndarray]]:
        """The window of trust read from the tracker's visit log, and every noise score over it (per sample)."""
        tracker = self.session.tracker
        visits, n = tracker.visits.arrays(), tracker.stats.size
        start, end = window_of_trust(visits, n, rate=self.config.noise_rate or 0.2)
        return (start, end), history_scores(visits, n, start=start, end=end)

    def _by_row(self, coords: dict[str, np.ndarray]) -> pd.DataFrame:
        index = self.session.tracker.index
        if index.packed:
            uid = index.seq_uid
            frame = pd.DataFrame({k: v[uid] for k, v in coords.items()})
            frame.index.name = "sample"  # as in dynamics(): packed samples, not user rows
            return frame
        user_uid = index.user_uid()
        dropped = user_uid < 0
        safe = np.where(dropped, 0, user_uid)
        cols = {}
        for k, v in coords.items():
            col = v[safe]
            if k == "region":
                col = np.where(dropped, "", col)
            elif k == "flag_noisy":
                col = col & ~dropped
            elif np.issubdtype(col.dtype, np.floating):
                col = np.where(dropped, np.nan, col)
            else:
                col = np.where(dropped, 0, col)
            cols[k] = col
        frame = pd.DataFrame(cols)
        frame.index.name = "row"
        return frame

    # -- policy -----------------------------------------------------------------------------------------
    def compute_weights(self, ctx: PolicyContext, reason: str) -> np.ndarray | None:
        coords = self._per_sample()
        flags = coords["flag_noisy"]
        report = self.noise_report
        self._metrics = {
            "sft/data_map/flagged_fraction": float(flags.mean()) if flags.size else 0.0,
            "sft/data_map/expected_precision": report.get("expected_precision", float("nan")),
            "sft/data_map/window_start": float(report["window"][0]) if report.get("window") else float("nan"),
            "sft/data_map/mean_confidence": float(np.nanmean(coords["confidence"])) if np.isfinite(coords["confidence"]).any() else float("nan"),
        }
        for region in REGIONS:
            self._metrics[f"sft/data_map/region/{region}"] = float((coords["region"] == region).mean())
        if self.config.downweight_after_epochs is None or reason not in ("epoch", "train_begin"):
            return None
        if ctx.epoch + (1 if reason == "epoch" else 0) < self.config.downweight_after_epochs:
            return None
        per_sample = np.where(flags, self.config.downweight, 1.0)
        rows = ctx.rows_from_samples(per_sample)
        return rows if (rows > 0).any() else None

    def on_epoch_end(self, args, state, control, **kwargs):
        super().on_epoch_end(args, state, control, **kwargs)
        if not self.needs_sampler and self._session is not None and self._session.tracker.stats is not None:
            self.compute_weights(self._session.context(state), "epoch")  # metrics only

    def policy_metrics(self) -> dict[str, float]:
        return {k: v for k, v in self._metrics.items() if np.isfinite(v)}


def plot_data_map(frame: pd.DataFrame, path: str, *, color_by: str = "region", title: str | None = None,
                  max_points: int = 50_000, seed: int = 0) -> str:
    """Draw the data map (variability on x, confidence on y, coloured by ``region`` or ``flag_noisy``) to ``path``.

    Needs matplotlib (``pip install "sft-callbacks[plot]"``). Samples beyond ``max_points`` are subsampled.

    Example:
        >>> plot_data_map(data_map.data_map(), "data_map.png")  # doctest: +SKIP
        'data_map.png'
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - exercised only without matplotlib
        raise ImportError('plot_data_map needs matplotlib: pip install "sft-callbacks[plot]"') from e
    if color_by not in ("region", "flag_noisy"):
        raise ValueError("color_by must be 'region' or 'flag_noisy'")
    missing = [c for c in ("confidence", "variability", color_by) if c not in frame.columns]
    if missing:
        raise ValueError(f"the frame lacks columns {missing}: pass DataMapCallback.data_map()")
    placed = np.isfinite(frame["confidence"]) & np.isfinite(frame["variability"])
    unplaced = int((np.isfinite(frame["confidence"]) & ~placed).sum())  # seen, but in fewer than 2 epochs
    data = frame[placed]
    if data.empty:
        raise ValueError(
            "no sample has data-map coordinates: each needs at least one epoch's statistics; train for at least "
            "two epochs (num_train_epochs >= 2) so confidence and variability mean something"
        )
    if len(data) > max_points:
        data = data.sample(max_points, random_state=seed)
    fig, ax = plt.subplots(figsize=(6, 5))
    if color_by == "region":
        groups = [(r, data[data["region"] == r]) for r in REGIONS]
    else:
        groups = [("flagged noisy", data[data["flag_noisy"]]), ("not flagged", data[~data["flag_noisy"]])]
    for label, part in groups:
        ax.scatter(part["variability"], part["confidence"], s=8, alpha=0.6, label=f"{label} ({len(part)})")
    if unplaced:  # counted, not drawn: a single epoch gives no variability
        ax.scatter([], [], s=0, label=f"seen in < 2 epochs, not placed ({unplaced})")
    ax.set_xlabel("variability (std of per-epoch confidence)")
    ax.set_ylabel("confidence (mean geometric-mean token probability)")
    ax.set_title(title or "Data map")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
