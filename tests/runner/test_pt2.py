"""runner.pt2: a .pt2 that ``torch.export.load`` would unpickle is refused before anything is loaded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from runner.pt2 import UnsafeArchive, load_program
from search_space.errors import UserError
from tests.runner.pt2_crafted import craft


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "clean.pt2"
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(1, 3),))
    torch.export.save(program, path, extra_files={"model_card.json": "{}"})
    return path


def test_a_plain_export_loads(clean: Path) -> None:
    module = load_program(clean).module()
    assert module(torch.zeros(1, 3)).shape == (1, 2)


@pytest.mark.parametrize("how", ["pickled_weight", "sample_inputs", "opaque_constant"])
def test_an_archive_that_would_unpickle_is_refused_without_running_it(clean: Path, tmp_path: Path, how: str) -> None:
    marker = tmp_path / "ran"
    evil = craft(clean, tmp_path / "evil.pt2", how, marker)
    with pytest.raises(UnsafeArchive) as info:
        load_program(evil)
    assert not marker.exists()
    assert str(evil) in str(info.value) and "refused" in str(info.value) and "\n" not in str(info.value)


def test_not_a_zip_is_a_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt2"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(UserError, match="corrupt or truncated model file"):
        load_program(path)


def test_a_checkpoint_holding_python_objects_is_refused_without_advising_to_unpickle(tmp_path: Path) -> None:
    """model.pt loads with weights_only=True; torch's message then advises weights_only=False: not passed on."""
    from runner.checkpoint import read_state_dict
    from tests.runner.pt2_crafted import Touch

    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "evil": Touch(marker)}, path)
    with pytest.raises(UserError, match="never unpickled") as info:
        read_state_dict(path)
    assert not marker.exists() and "weights_only" not in str(info.value) and "trust" not in str(info.value)
