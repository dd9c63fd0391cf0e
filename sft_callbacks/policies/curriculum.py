"""Curriculum learning: train on the easiest rows first and widen the pool as training goes on.

Pure functions first (progress -> competence, difficulty -> percentile, percentile + competence -> weights,
progress -> stage, groups -> weights), tested on arrays; then :class:`CurriculumCallback`, which computes the
difficulty once when training begins and, at every sync point, turns the current competence (or stage) into
sampling weights: 1 for rows the curriculum allows, 0 for the others. A zero excludes the row whatever the
other active policies say (:func:`~sft_callbacks.engine.weights.combine_weights`), so a curriculum combines with any
reweighting policy: they reweight among the rows it allows.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ..engine.callbacks import SamplingPolicyCallback
from ..engine.config import CallbackConfig
from ..engine.frames import per_user_row
from ..engine.hashing import splitmix64
from ..engine.sampling import decode_array, encode_array
from ..engine.scoring import length_difficulty, loss_difficulty

logger = logging.getLogger(__name__)

PACINGS = ("linear", "root", "step", "exponential")
_EPS = 1e-9


# ----------------------------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------------------------
def competence(
    progress,
    pacing: str | Callable[[float], float] = "linear",
    start: float = 0.1,
    duration: float = 0.8,
    *,
    root_p: float = 2.0,
    num_steps: int = 4,
):
    """Fraction of the rows (easiest first) the curriculum allows at ``progress`` (fraction of training done).

    With ``t = min(1, progress / duration)`` and ``c0 = start``:

    - ``"linear"``: ``c0 + (1 - c0) * t``;
    - ``"root"`` (Platanios et al. 2019): ``(c0**p + (1 - c0**p) * t) ** (1/p)`` with ``p = root_p`` (2: square
      root); fast growth early, when the easy rows are learnt quickly;
    - ``"step"``: ``c0 + (1 - c0) * floor(t * num_steps) / num_steps``: ``num_steps`` equal jumps, the last one
      to 1 at ``duration`` (baby steps);
    - ``"exponential"``: ``c0 ** (1 - t)``: geometric growth, slow early;
    - a callable ``f(progress) -> competence``, clipped to [0, 1] (``start`` / ``duration`` unused).

    Every built-in pacing is ``start`` at progress 0, non-decreasing, and 1 from ``duration`` on.
    ``progress`` may be a float (returns a float) or an array (returns an array).

    Example:
        >>> round(competence(0.25, "linear", start=0.2, duration=0.5), 6)
        0.6
        >>> round(competence(0.0, "root", start=0.2), 6), competence(0.9, "root", start=0.2, duration=0.8)
        (0.2, 1.0)
        >>> competence(np.array([0.0, 0.3, 0.6]), "step", start=0.5, duration=0.6, num_steps=2).tolist()
        [0.5, 0.75, 1.0]
    """
    scalar = np.ndim(progress) == 0
    p = np.clip(np.asarray(progress, dtype=np.float64), 0.0, 1.0)
    if callable(pacing):
        c = np.vectorize(lambda x: float(pacing(float(x))), otypes=[np.float64])(p)
        if not np.isfinite(c).all():
            raise ValueError("the pacing function returned a non-finite competence")
        c = np.clip(c, 0.0, 1.0)
    else:
        _check_schedule(pacing, start, duration, root_p, num_steps)
        t = np.minimum(1.0, p / duration)
        if pacing == "linear":
            c = start + (1.0 - start) * t
        elif pacing == "root":
            c = (start**root_p + (1.0 - start**root_p) * t) ** (1.0 / root_p)
        elif pacing == "step":
            c = start + (1.0 - start) * np.floor(t * num_steps + _EPS) / num_steps
        else:  # exponential
            c = start ** (1.0 - t)
        c = np.where(t >= 1.0, 1.0, np.clip(c, start, 1.0))
    return float(c) if scalar else c


def difficulty_ranks(difficulty, tiebreak=None) -> np.ndarray:
    """Percentile of every row in the easy-to-hard order: ``k / n`` for the ``k``-th easiest row, in (0, 1].

    Every row gets a distinct percentile, so a competence ``c`` allows exactly ``floor(c * n)`` rows. Ties in
    ``difficulty`` are ordered by ``tiebreak`` (e.g. a hash of each row's tokens: deterministic, and not
    following the dataset's order), then by row index.

    Example:
        >>> difficulty_ranks([3.0, 1.0, 2.0, 1.0]).tolist()
        [1.0, 0.25, 0.75, 0.5]
        >>> difficulty_ranks([1.0, 1.0], tiebreak=[9, 4]).tolist()
        [1.0, 0.5]
    """
    d = np.asarray(difficulty, dtype=np.float64).reshape(-1)
    n = d.shape[0]
    if n == 0:
        return np.zeros(0)
    if not np.isfinite(d).all():
        raise ValueError(f"difficulty has {int((~np.isfinite(d)).sum())} non-finite values; it must be finite")
    keys = [np.arange(n)]
    if tiebreak is not None:
        tb = np.asarray(tiebreak).reshape(-1)
        if tb.shape[0] != n:
            raise ValueError(f"tiebreak has {tb.shape[0]} values for {n} rows")
        keys.append(tb)
    keys.append(d)
    order = np.lexsort(keys)  # last key is the primary one
    out = np.empty(n, dtype=np.float64)
    out[order] = np.arange(1, n + 1, dtype=np.float64) / n
    return out


def curriculum_weights(percentile, competence: float, anti: bool = False) -> np.ndarray:
    """1.0 for the rows the curriculum allows at ``competence``, 0.0 for the others.

    A row is allowed when its percentile (from :func:`difficulty_ranks`) is ``<= competence``; with ``anti``
    the order is reversed (the hardest rows first): allowed when ``1 - percentile < competence``. At least the
    easiest (with ``anti``, the hardest) row is always allowed, so the weights never vanish.

    Example:
        >>> p = difficulty_ranks([4.0, 1.0, 3.0, 2.0])
        >>> curriculum_weights(p, 0.5).tolist(), curriculum_weights(p, 0.5, anti=True).tolist()
        ([0.0, 1.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0])
    """
    p = np.asarray(percentile, dtype=np.float64).reshape(-1)
    c = float(competence)
    if not 0.0 <= c <= 1.0 + _EPS:
        raise ValueError(f"competence must be in [0, 1], got {c}")
    if p.size == 0:
        return np.zeros(0)
    allowed = p > 1.0 - c + _EPS if anti else p <= c + _EPS
    if not allowed.any():
        allowed = p == (p.max() if anti else p.min())
    return allowed.astype(np.float64)


def stage_at(progress: float, durations: Sequence[float]) -> int:
    """Index of the stage running at ``progress``: stage ``i`` spans ``[sum(durations[:i]), sum(durations[:i+1]))``.

    Progress at or past the end stays in the last stage.

    Example:
        >>> [stage_at(x, [0.25, 0.25, 0.5]) for x in (0.0, 0.249, 0.25, 0.5, 1.0)]
        [0, 0, 1, 2, 2]
    """
    bounds = np.cumsum(np.asarray(durations, dtype=np.float64))
    if bounds.size == 0:
        raise ValueError("durations must not be empty")
    i = int(np.searchsorted(bounds, float(progress) + _EPS, side="right"))
    return min(i, bounds.size - 1)


def stage_weights(group_values: Sequence[Any], allowed_groups) -> np.ndarray:
    """1.0 for rows whose group is in ``allowed_groups``, 0.0 for the others.

    Groups are compared by their string form (as the group policies name them), so ``[1, 2]`` and
    ``["1", "2"]`` select the same rows of an integer column, and ``None`` matches missing values.

    Example:
        >>> stage_weights(["basics", "chat", "code", "basics"], ["basics", "chat"]).tolist()
        [1.0, 1.0, 0.0, 1.0]
        >>> stage_weights([1, 2, 3], ["1", 3]).tolist()
        [1.0, 0.0, 1.0]
    """
    is_str = isinstance(group_values, np.ndarray) and group_values.dtype.kind == "U"
    values = group_values if is_str else _as_str(group_values)
    return np.isin(values, _as_str(allowed_groups)).astype(np.float64)


def _as_str(values) -> np.ndarray:
    return np.array([str(v) for v in values], dtype=str) if len(values) else np.zeros(0, dtype=str)


def _check_schedule(pacing, start, duration, root_p, num_steps) -> None:
    if not callable(pacing) and pacing not in PACINGS:
        raise ValueError(f"pacing must be one of {list(PACINGS)} or a callable progress -> competence, got {pacing!r}")
    if not (_is_real(start) and 0.0 < start <= 1.0):
        raise ValueError(f"start (the competence at step 0, c0) must be in (0, 1], got {start!r}")
    if not (_is_real(duration) and 0.0 < duration <= 1.0):
        raise ValueError(
            f"duration (fraction of training until competence reaches 1) must be in (0, 1], got {duration!r}"
        )
    if not (_is_real(root_p) and root_p >= 1):
        raise ValueError(f"root_p must be >= 1, got {root_p!r}")
    if not (isinstance(num_steps, numbers.Integral) and not isinstance(num_steps, bool) and num_steps >= 1):
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


# ----------------------------------------------------------------------------------------------------------------
# Callback
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class CurriculumConfig(CallbackConfig):
    """Options of :class:`CurriculumCallback` (see its Args), checked when built.

    Example:
        >>> CurriculumConfig(pacing="root", start=0.1).duration
        0.8
    """

    difficulty: str | Callable[[dict], float] = "length"
    pacing: str | Callable[[float], float] = "linear"
    start: float = 0.2
    duration: float = 0.8
    root_p: float = 2.0
    num_steps: int = 4
    anti: bool = False
    stages: Sequence[Sequence[Any]] | None = None
    stage_column: str | None = None
    stage_durations: Sequence[float] | None = None
    update_every_steps: int | None = None
    scoring_batch_size: int = 16

    def __post_init__(self):
        difficulty = self.difficulty
        self.require(callable(difficulty) or (isinstance(difficulty, str) and bool(difficulty)),
                     "difficulty must be 'length', 'loss', the name of a numeric column, or a callable row -> float",
                     difficulty)
        _check_schedule(self.pacing, self.start, self.duration, self.root_p, self.num_steps)
        self.require(isinstance(self.anti, bool), "anti must be True or False", self.anti)
        every = self.update_every_steps
        self.require(every is None or (isinstance(every, int) and not isinstance(every, bool) and every >= 1),
                     "update_every_steps must be None or an integer >= 1", every)
        self.require(isinstance(self.scoring_batch_size, int) and self.scoring_batch_size >= 1,
                     "scoring_batch_size must be an integer >= 1", self.scoring_batch_size)
        if self.stages is None:
            self.require(self.stage_column is None and self.stage_durations is None,
                         "stage_column and stage_durations only apply with stages=[[...], ...]")
        else:
            stages, durations = _check_stages(self.stages, self.stage_column, self.stage_durations)
            changed = [name for name, value, default in (
                ("difficulty", difficulty, "length"), ("pacing", self.pacing, "linear"), ("start", self.start, 0.2),
                ("duration", self.duration, 0.8), ("anti", self.anti, False)) if value != default]
            self.require(not changed, f"stages restrict rows by group instead of by difficulty; {changed} do not apply "
                                      "with stages (set each stage's length with stage_durations)")
            self._set("stages", stages)
            self._set("stage_durations", durations)
        self._set("start", float(self.start))
        self._set("duration", float(self.duration))
        self._set("root_p", float(self.root_p))


class CurriculumCallback(SamplingPolicyCallback):
    """A [`~transformers.TrainerCallback`] that trains on the easiest rows first and widens the pool over training.

    Competence-based curriculum (Platanios et al. 2019): each row gets a difficulty, turned into its percentile in
    the easy-to-hard order; at progress ``x`` (fraction of the optimizer steps done) only rows whose percentile
    is at most the competence ``c(x)`` may be drawn. ``c`` starts at ``start`` (the paper's ``c0``) and reaches
    1 at ``duration`` (the paper's ``T``, here a fraction of training), after which every row is drawn as usual.
    With ``stages`` the pool is instead restricted by task group, stage after stage (multi-stage training).

    Rows outside the pool get weight 0, which excludes them whatever the other policies say; other policies
    reweight among the allowed rows. The first weights are set before the first batch is drawn; later ones at
    each sync point, drawn from at most ``lag`` micro-batches later (README, "When do new weights take effect"),
    so a row never appears before the competence reaches it.

    Cost: nothing per step; O(rows) at each sync point. ``difficulty="length"`` is free (the session's index
    already counts trained tokens); a column or a callable costs one pass over the rows when training begins;
    ``difficulty="loss"`` costs one batched forward pass over the training set before training (about a third of
    an epoch's compute), shown with a progress bar, logged, and reported as ``sft/curriculum/scoring_seconds``.
    The difficulty is cached in checkpoints, so a resumed run does not score again.

    Args:
        difficulty (`str` or `callable`, defaults to `"length"`): how hard a row is. ``"length"``: its number of
            trained (completion) tokens; ``"loss"``: the initial model's mean NLL on them; the name of a numeric
            column of your training dataset; or a callable ``f(row: dict) -> float`` given each row of the
            trainer's training dataset (your columns plus TRL's ``input_ids`` ...). For packed data a row is a
            pack (length: the sum over its samples; loss: the mean over its tokens).
        pacing (`str` or `callable`, defaults to `"linear"`): ``"linear"``, ``"root"``, ``"step"``,
            ``"exponential"`` or ``f(progress) -> competence`` (see :func:`competence`).
        start (`float`, defaults to 0.2): competence at step 0 (``c0``), the fraction of rows available first.
        duration (`float`, defaults to 0.8): fraction of training after which every row is available (``T``).
        root_p (`float`, defaults to 2): the root of ``pacing="root"``.
        num_steps (`int`, defaults to 4): jumps of ``pacing="step"``.
        anti (`bool`, defaults to `False`): anti-curriculum, the hardest rows first.
        stages (`list[list]`, *optional*): multi-stage training over task groups, e.g.
            ``[["basics"], ["basics", "chat"], ["basics", "chat", "code"]]``: in stage ``i`` only rows whose
            ``stage_column`` value is in ``stages[i]`` are drawn. Replaces the difficulty curriculum (do not set
            ``difficulty``, ``pacing``, ``start``, ``duration`` or ``anti`` with it).
        stage_column (`str`, *optional*): the column holding each row's group; required with ``stages``.
        stage_durations (`list[float]`, *optional*): fraction of training of each stage, summing to 1 (default:
            equal).
        update_every_steps (`int`, *optional*): move the competence (or stage) only at multiples of this many
            optimizer steps; default: at every sync point (``TrainingDynamicsCallback(sync_every=...)``).
        scoring_batch_size (`int`, defaults to 16): sequences per forward of the ``"loss"`` scoring pass.

    Attributes:
        difficulty (`np.ndarray`): per dataloader row, once training has begun (``None`` before).
        percentiles (`np.ndarray`): each row's percentile in the easy-to-hard order, ``k / n`` for the ``k``-th.
        scoring_seconds (`float`): wall time of the ``"loss"`` scoring pass (``None`` for other difficulties).

    Example:
        >>> from sft_callbacks import TrainingDynamicsCallback  # doctest: +SKIP
        >>> from sft_callbacks.policies.curriculum import CurriculumCallback  # doctest: +SKIP
        >>> curriculum = CurriculumCallback(pacing="root", start=0.2, duration=0.5)  # doctest: +SKIP
        >>> trainer = SFTTrainer(..., callbacks=[TrainingDynamicsCallback(), curriculum])  # doctest: +SKIP
        >>> stages = CurriculumCallback(stages=[["math"], ["math", "code"]], stage_column="domain")  # doctest: +SKIP

    References:
        Bengio, Louradour, Collobert, Weston. "Curriculum Learning". ICML 2009.
        Platanios, Stretcu, Neubig, Poczos, Mitchell. "Competence-based Curriculum Learning for Neural Machine
        Translation". NAACL 2019 (``start`` is ``c0``, ``duration`` is ``T`` as a fraction of training, ``"root"``
        with ``root_p=2`` is their ``c_sqrt``).
    """

    config_class = CurriculumConfig

    def __init__(self, config: CurriculumConfig | None = None, /, **options):
        super().__init__(config, **options)
        # Internal state.
        self.difficulty: np.ndarray | None = None  # per dataloader row, computed once
        self.percentiles: np.ndarray | None = None
        self.scoring_seconds: float | None = None
        self._groups: np.ndarray | None = None
        self._last_mask: np.ndarray | None = None
        self._metrics: dict[str, float] = {}

    # -- contract ---------------------------------------------------------------------------------------------
    def row_annotations(self):
        """``difficulty`` per row of the training dataset (higher = harder), once it has been computed."""
        tracker = self.session.tracker
        if self.difficulty is None or tracker.index is None or tracker.index.packed:
            return None
        return pd.DataFrame({"difficulty": per_user_row(tracker, self.difficulty)})

    def on_train_begin(self, args, state, control, **kwargs):
        # A new train() call may bring another dataset or model: difficulty and groups are computed afresh, unless
        # the checkpoint being resumed holds them (restored by the base class, after this reset).
        self.difficulty = self.percentiles = self.scoring_seconds = self._groups = self._last_mask = None
        self._metrics = {}
        super().on_train_begin(args, state, control, **kwargs)

    def required_columns(self) -> list[str]:
        if self.config.stages is not None:
            return [self.config.stage_column]
        if isinstance(self.config.difficulty, str) and self.config.difficulty not in ("length", "loss"):
            return [self.config.difficulty]
        return []

    def compute_weights(self, ctx, reason: str) -> np.ndarray | None:
        step = ctx.step
        if self.config.update_every_steps is not None:
            step = (step // self.config.update_every_steps) * self.config.update_every_steps
        progress = min(1.0, step / ctx.max_steps) if ctx.max_steps > 0 else 0.0
        if self.config.stages is not None:
            groups = self._stage_groups(ctx)
            stage = stage_at(progress, self.config.stage_durations)
            mask = stage_weights(groups, self.config.stages[stage])
            self._metrics = {"sft/curriculum/stage": float(stage)}
        else:
            percentiles = self._percentiles(ctx)
            c = competence(
                progress, self.config.pacing, self.config.start, self.config.duration, root_p=self.config.root_p, num_steps=self.config.num_steps
            )
            # Validation-paced difficulty (ValidationGuidedResamplingCallback(paced_difficulty=True)) moves
            # competence forward, so the hard tail becomes available sooner when validation stops improving.
            c = float(c + float(getattr(ctx, "signals", {}).get("hard_boost", 0.0)) * (1.0 - c))
            mask = curriculum_weights(percentiles, c, anti=self.config.anti)
            self._metrics = {"sft/curriculum/competence": float(c)}
        self._metrics["sft/curriculum/available_fraction"] = float(mask.mean())
        if self._last_mask is not None and np.array_equal(mask, self._last_mask):
            return None  # unchanged: the session keeps the previous weights
        self._last_mask = mask
        return mask

    def policy_metrics(self) -> dict[str, float]:
        out = dict(self._metrics)
        if self.scoring_seconds is not None:
            out["sft/curriculum/scoring_seconds"] = float(self.scoring_seconds)
        return out

    def policy_state(self) -> dict:
        state: dict[str, Any] = {}
        if self.difficulty is not None:
            state["difficulty"] = encode_array(self.difficulty)
            state["source"] = self._source_name()
        if self.scoring_seconds is not None:
            state["scoring_seconds"] = self.scoring_seconds
        return state

    def load_policy_state(self, state: dict) -> None:
        if "difficulty" in state and state.get("source") == self._source_name():
            self.difficulty = decode_array(state["difficulty"]).astype(np.float64)
            self.percentiles = None
        if state.get("scoring_seconds") is not None:
            self.scoring_seconds = float(state["scoring_seconds"])
        self._last_mask = None

    # -- difficulty -------------------------------------------------------------------------------------------
    def _source_name(self) -> str:
        src = self.config.difficulty
        return src if isinstance(src, str) else f"callable:{getattr(src, '__qualname__', type(src).__name__)}"

    def _percentiles(self, ctx) -> np.ndarray:
        if self.difficulty is not None and len(self.difficulty) != ctx.num_rows:
            logger.warning(
                "CurriculumCallback: the cached difficulty covers %d rows but the training set has %d; "
                "computing it again",
                len(self.difficulty), ctx.num_rows,
            )
            self.difficulty = None
        if self.difficulty is None:
            self.difficulty = self._compute_difficulty(ctx)
            self.percentiles = None
        if self.percentiles is None:
            self.percentiles = difficulty_ranks(self.difficulty, tiebreak=_row_hashes(ctx.index))
        return self.percentiles

    def _compute_difficulty(self, ctx) -> np.ndarray:
        src = self.config.difficulty
        if src == "length":
            values = length_difficulty(index=ctx.index)
        elif src == "loss":
            show = not getattr(ctx.args, "disable_tqdm", False)
            scores = loss_difficulty(
                ctx.model, ctx.dataset, batch_size=self.config.scoring_batch_size, progress=show,
                desc="Curriculum: scoring rows by loss",
            )
            self.scoring_seconds = scores.seconds
            if getattr(ctx.args, "should_log", True):
                logger.info(
                    "CurriculumCallback: scored %d rows by the model's loss in %.1f s (one forward pass, batch %d)",
                    ctx.num_rows, scores.seconds, self.config.scoring_batch_size,
                )
            values = scores.loss
        elif callable(src):
            values = np.array([_as_float(src(row), "the difficulty callable") for row in ctx.columns], dtype=np.float64)
        else:
            raw = ctx.column(src)
            try:
                values = np.asarray(raw, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                raise ValueError(
                    f"difficulty column {src!r} must hold numbers (got e.g. {raw[0]!r}); map it to numbers first, or "
                    "pass stages=[...] with stage_column to order task groups"
                ) from None
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (ctx.num_rows,):
            raise ValueError(f"difficulty has {values.size} values for {ctx.num_rows} training rows")
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(
                f"difficulty {self._source_name()!r} is not finite (NaN or inf) for {int(bad.sum())} rows; "
                "every row needs a finite difficulty"
            )
        return values

    def _stage_groups(self, ctx) -> np.ndarray:
        if self._groups is None or len(self._groups) != ctx.num_rows:
            groups = _as_str(ctx.column(self.config.stage_column))  # once: later stage switches are vectorised
            present = set(np.unique(groups).tolist())
            for i, stage in enumerate(self.config.stages):
                if not present.intersection(map(str, stage)):
                    raise ValueError(
                        f"stage {i} ({list(stage)}) matches no row: column {self.config.stage_column!r} holds "
                        f"{sorted(present)}"
                    )
            unknown = sorted({str(g) for stage in self.config.stages for g in stage} - present)
            if unknown:
                logger.warning("CurriculumCallback: groups %s of stages appear in no training row", unknown)
            self._groups = groups
        return self._groups


def _as_float(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must return a number for every row, got {value!r}") from None


def _row_hashes(index) -> np.ndarray:
    """A deterministic pseudo-random value per dataloader row (from its tokens), to break difficulty ties."""
    # The content key of a row's first sequence (for packed rows, of its first sample): a hash of its tokens.
    keys = np.zeros(index.num_rows, dtype=np.uint64)
    rows, first = np.unique(np.asarray(index.seq_row), return_index=True)
    keys[rows] = index.keys[np.asarray(index.seq_uid)[first]]
    return splitmix64(keys)


def _check_stages(stages, stage_column, stage_durations):
    if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or len(stages) == 0:
        raise ValueError(
            "stages must be a non-empty list of lists of group names, e.g. [['basics'], ['basics', 'chat']]"
        )
    out = []
    for i, stage in enumerate(stages):
        if isinstance(stage, (str, bytes)) or not isinstance(stage, Sequence) or len(stage) == 0:
            raise ValueError(f"stage {i} must be a non-empty list of group names, got {stage!r}")
        out.append(list(stage))
    if not isinstance(stage_column, str) or not stage_column:
        raise ValueError("stages need stage_column: the column of your dataset holding each row's group")
    if stage_durations is None:
        durations = [1.0 / len(out)] * len(out)
    else:
        durations = [float(d) for d in stage_durations]
        if len(durations) != len(out):
            raise ValueError(f"stage_durations has {len(durations)} entries for {len(out)} stages")
        if any(not (math.isfinite(d) and d > 0) for d in durations):
            raise ValueError(f"stage_durations must be positive fractions of training, got {list(stage_durations)}")
        if abs(sum(durations) - 1.0) > 1e-6:
            raise ValueError(f"stage_durations must sum to 1 (fractions of training), got sum {sum(durations):.6g}")
    return out, durations
