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
