"""Typed metric records read and write the `metrics.jsonl` line format of earlier versions unchanged: lines
written by the code before the records were typed (27c2671, the default config) round-trip key for key, in order."""

from __future__ import annotations

import json

from vgpo_fast.train.records import BaseEvalRecord, IterationRecord, from_json

# Written by 27c2671 (`vgpo-fast train`, default config, bf16, eval every 2): the base evaluation and iteration 1,
# which carries held-out scores and an evaluation time.
OLD_BASE = (
    '{"iteration":-1,"heldout_reward":0.3192708492279053,"heldout_accuracy":0.0625,'
    '"timings":{"eval":1.1745229440000458}}'
)
OLD_ITERATION = (
    '{"iteration":1,"reward_mean":0.5347656011581421,"reward_std":0.32357311248779297,"group_std_mean":0.'
    '20090515911579132,"zero_std_frac":0.0,"dropped_groups":0,"advantage_mean":0.2402839958667755,"advant'
    'age_std":1.1683297157287598,"advantage_abs_mean":0.8927146196365356,"q_mean":1.8070062398910522,"ome'
    'ga_mean":1.0,"omega_min":0.15696750581264496,"omega_max":1.8404227495193481,"omega_fallback_frac":0.'
    '0,"loss":-0.2996082908163468,"clip_frac":0.010416666666666666,"approx_kl":3.5118854583663744e-10,"kl'
    '":1.0537984446538455e-06,"ratio_dev":5.431473255157471e-05,"grad_norm":0.024439876899123192,"optimiz'
    'er_steps":4,"overlap_frac":0.8827883408086606,"timings":{"transformer":2.3020332370001597,"sde_op":0'
    '.06368536399986624,"reward_wait":0.01462833400000818,"advantage":0.0006968160000155876,"train":4.223'
    '033348999991,"total":6.6040771000000404,"eval":0.8117775310000184},"reward_worker":{"decode":0.00275'
    '8914999958506,"reward":0.1220438060000788},"instant_reward":[0.02734375186264515,0.0247395858168602,'
    "0.0546875,0.2324218899011612,0.43020832538604736,0.5510416626930237,0.555859386920929,0.534765601158"
    '1421,0.5347656011581421,0.5347656011581421],"heldout_reward":0.3255208432674408,"heldout_accuracy":0'
    '.0625,"heldout_drift":0.014805134385824203}'
)


def test_lines_of_an_earlier_version_round_trip_key_for_key() -> None:
    for line in (OLD_BASE, OLD_ITERATION):
        data = json.loads(line)
        record = from_json(data)
        assert list(record.to_json().items()) == list(data.items())
    assert isinstance(from_json(json.loads(OLD_BASE)), BaseEvalRecord)
    record = from_json(json.loads(OLD_ITERATION))
    assert isinstance(record, IterationRecord) and record.iteration == 1
    assert record.update.optimizer_steps == 4 and record.timings.eval is not None
    assert set(record.heldout) == {"heldout_reward", "heldout_accuracy", "heldout_drift"}
