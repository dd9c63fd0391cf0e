"""Every strategy has one shape: a frozen config dataclass, validated when built, whose fields are exactly what the
checkpoint keeps and what the provenance card lists."""

from __future__ import annotations

import dataclasses
import json

import pytest

import sft_callbacks
from sft_callbacks.curation.curated import callback_config
from sft_callbacks.engine.callbacks import SFTCallback
from sft_callbacks.engine.config import CallbackConfig
from sft_callbacks.hub.card import card_text

# What each needs beyond its defaults.
REQUIRED = {
    "GroupBalanceCallback": dict(group_column="domain"),
    "ValidationGuidedResamplingCallback": dict(group_column="domain"),
    "DomainAdaptationCallback": dict(group_column="domain", target_group="food"),
}
STRATEGIES = sorted(
    (getattr(sft_callbacks, name) for name in sft_callbacks.__all__
     if isinstance(getattr(sft_callbacks, name), type) and issubclass(getattr(sft_callbacks, name), SFTCallback)
     and getattr(sft_callbacks, name) not in (SFTCallback, sft_callbacks.SamplingPolicyCallback)),
    key=lambda c: c.__name__,
)


def test_every_public_callback_has_a_config_class():
    assert len(STRATEGIES) >= 7
    missing = [c.__name__ for c in STRATEGIES if c.config_class is None]
    assert not missing, missing
    for cls in STRATEGIES:
        frozen = cls.config_class.__dataclass_params__.frozen
        kw_only = all(f.kw_only for f in dataclasses.fields(cls.config_class))
        assert issubclass(cls.config_class, CallbackConfig) and frozen and kw_only, cls.__name__


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_every_config_field_reaches_the_checkpoint_and_the_card(cls):
    cb = cls(**REQUIRED.get(cls.__name__, {}))
    fields = [f.name for f in dataclasses.fields(cls.config_class)]
    assert list(cb.config.to_dict()) == fields
    saved = json.loads(json.dumps(cb.state()))["args"]  # what trainer_state.json keeps
    assert list(saved) == fields
    assert saved == cb.config.jsonable()
    entry = callback_config(cb)
    assert list(entry["config"]) == fields
    text = card_text({"counts": {"rows_in": 1, "rows_out": 1, "dropped": {}}, "callbacks": [entry]})
    line = next(line for line in text.splitlines() if line.startswith(f"- **{cls.__name__}**"))
    assert all(f'"{name}"' in line for name in fields), line
    # The keyword form and the config form are the same callback; a config is immutable.
    same = cls(cls.config_class(**REQUIRED.get(cls.__name__, {})))
    assert same.config == cb.config
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cb.config, fields[0], None)
    with pytest.raises(TypeError, match="not both"):
        cls(cb.config, **REQUIRED.get(cls.__name__, {"x": 1}))


@pytest.mark.parametrize("cls", STRATEGIES, ids=lambda c: c.__name__)
def test_unknown_options_fail_when_the_config_is_built(cls):
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_option'"):
        cls(no_such_option=1, **REQUIRED.get(cls.__name__, {}))
