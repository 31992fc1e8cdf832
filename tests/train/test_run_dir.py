"""The run directory: a saved config of an earlier version (with `algorithm.tcrm` / `adae`) passes the resume
check against today's spelling of the same run, and a real difference is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vgpo_fast.train.config import load
from vgpo_fast.train.config_io import to_dict
from vgpo_fast.train.run_dir import check_resume_config, write_config


def _old_config(run_dir: Path, **algorithm) -> None:
    """config.yaml as earlier versions wrote it: the algorithm section with the tcrm / adae booleans."""
    data = to_dict(load(None))
    data["algorithm"] = {"name": "vgpo", "tcrm": True, "adae": True, **data["algorithm"], **algorithm}
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def test_an_earlier_versions_ablation_config_resumes_under_its_new_name(tmp_path: Path) -> None:
    _old_config(tmp_path / "run", tcrm=False)
    check_resume_config(tmp_path / "run", load(None, ["algorithm.name=vgpo_no_tcrm"]))
    check_resume_config(tmp_path / "run", load(None, ["algorithm.tcrm=false", "train.iterations=120"]))
    with pytest.raises(ValueError, match=r"differs from .*config\.yaml in \['algorithm\.name'\]"):
        check_resume_config(tmp_path / "run", load(None))


def test_written_config_loads_back_equal_with_its_notes(tmp_path: Path) -> None:
    cfg = load(None, ["algorithm.name=flow_grpo"])
    write_config(tmp_path, cfg, ["a note", "another"])
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# a note\n# another\n")
    assert to_dict(load(tmp_path / "config.yaml")) == to_dict(cfg)
