"""Evidence experiments (installed as `vgpo_fast.experiments`): `vgpo-fast experiment NAME` runs a set of training
runs (variants x seeds) of the built-in tasks and writes `results.json`, a markdown table and PNG plots.

    vgpo-fast experiment --list
    vgpo-fast experiment shapes-ablation              # Flow-GRPO, VGPO, VGPO w/o TCRM, w/o ADAE; 3 seeds each
    vgpo-fast experiment shapes-ablation --analyze    # the tables and plots again from the runs on disk

Definitions: `registry.py`; running and resuming: `runner.py`; the measures: `analysis.py`.
"""
