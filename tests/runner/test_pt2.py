"""runner.engine.pt2: a .pt2 that ``torch.export.load`` would unpickle is refused before anything is loaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cellsparse.errors import UserError
from runner.engine.pt2 import UnsafeArchive, load_program
from tests.runner.pt2_crafted import TARGETS, craft, duplicated, mutate, read_entries, write_entries


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
    from runner.engine.checkpoint import read_state_dict
    from tests.runner.pt2_crafted import Touch

    marker = tmp_path / "ran"
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.zeros(2), "evil": Touch(marker)}, path)
    with pytest.raises(UserError, match="never unpickled") as info:
        read_state_dict(path)
    assert not marker.exists() and "weights_only" not in str(info.value) and "trust" not in str(info.value)


# --------------------------------------------------------------------------------------------- ambiguous names

@pytest.mark.parametrize("harmful_first", [True, False], ids=["harmful_first", "harmful_last"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_a_repeated_entry_name_is_refused_whichever_copy_is_harmful(clean: Path, tmp_path: Path, target: str,
                                                                     harmful_first: bool) -> None:
    """zipfile returns the last copy of a repeated name, torch's reader may return the first: refused either way."""
    marker = tmp_path / "ran"
    evil = duplicated(clean, tmp_path / "evil.pt2", target, marker, harmful_first=harmful_first)
    with pytest.raises(UnsafeArchive, match="entries named") as info:
        load_program(evil)
    assert not marker.exists() and str(evil) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["upper", "title"])
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_names_that_differ_only_in_case_are_refused(clean: Path, tmp_path: Path, target: str, case: str) -> None:
    """torch's zip reader finds 'model.pt' under 'MODEL.pt': two such names are one name to it."""
    marker = tmp_path / "ran"
    evil = duplicated(clean, tmp_path / "evil.pt2", target, marker, harmful_first=True, case=case)
    with pytest.raises(UnsafeArchive, match="case-insensitively"):
        load_program(evil)
    assert not marker.exists()


def test_the_two_readers_return_different_copies_of_a_repeated_name(clean: Path, tmp_path: Path) -> None:
    """Why the check reads through torch and refuses repeated names: here Python's zipfile returns the
    clean last copy of the weights config while torch's reader returns the harmful first one (which
    copy miniz returns depends on where its sorted lookup lands: no order is safe)."""
    import zipfile

    name = TARGETS["weights_config"]
    evil = duplicated(clean, tmp_path / "evil.pt2", "weights_config", tmp_path / "ran", harmful_first=True)
    with zipfile.ZipFile(evil) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        python_sees = archive.read(f"{root}/{name}")
    torch_sees = bytes(torch._C.PyTorchFileReader(str(evil)).get_record(name))
    clean_copy = dict(read_entries(clean))[f"{root}/{name}"]
    assert python_sees == clean_copy and torch_sees != clean_copy and b'"use_pickle": true' in torch_sees


def test_a_folder_entry_is_refused(clean: Path, tmp_path: Path) -> None:
    entries = read_entries(clean)
    root = entries[0][0].split("/", 1)[0]
    path = write_entries(tmp_path / "folder.pt2", [(f"{root}/data/", b""), *entries])
    with pytest.raises(UnsafeArchive, match="folder entry"):
        load_program(path)


def test_bytes_the_two_readers_read_differently_are_refused(clean: Path, tmp_path: Path) -> None:
    """Python's zipfile tolerates bytes before the archive, miniz does not (and torch.export.load would
    then fall back to a zipfile reader of its own)."""
    path = tmp_path / "odd.pt2"
    path.write_bytes(b"JUNK" * 100 + clean.read_bytes())
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_program(path)


def test_the_check_reads_the_bytes_it_loads(clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is read once: the check and torch.export.load see the same bytes, so swapping the file
    after the check changes nothing."""
    import runner.engine.pt2 as pt2

    path = tmp_path / "model.pt2"
    path.write_bytes(clean.read_bytes())
    marker = tmp_path / "ran"
    evil = craft(clean, tmp_path / "evil.pt2", "sample_inputs", marker)
    checked = pt2.check_archive

    def check_then_swap(p: Path, data: bytes | None = None) -> None:
        checked(p, data)
        path.write_bytes(evil.read_bytes())  # an attacker swaps the file between the check and the load

    monkeypatch.setattr(pt2, "check_archive", check_then_swap)
    assert pt2.load_program(path).module()(torch.zeros(1, 3)).shape == (1, 2)
    assert not marker.exists()


FUZZ_CASES = int(os.environ.get("PT2_FUZZ_CASES", "150"))


def test_fuzzed_archives_never_run_code_and_load_only_the_clean_model(clean: Path, tmp_path: Path) -> None:
    """Random mutations of clean and crafted archives (repeated, case-twin, renamed, folder entries,
    harmful payloads, reordering, deflate, flipped or cut bytes, junk before or after, concatenation):
    each is refused with a UserError or loads the clean model's weights; no code ever runs."""
    import random

    rng = random.Random(29)
    marker = tmp_path / "ran"
    bases = [read_entries(clean)] + [read_entries(craft(clean, tmp_path / f"{how}.pt2", how, marker))
                                     for how in ("pickled_weight", "sample_inputs", "opaque_constant")]
    raw = clean.read_bytes()
    expected = load_program(clean).module()(torch.ones(1, 3))
    outcomes: dict[str, int] = {}
    for case in range(FUZZ_CASES):
        path = tmp_path / f"fuzz_{case}.pt2"
        path.write_bytes(mutate(rng.choice(bases), raw, rng, marker))
        try:
            module = load_program(path).module()
        except UserError as err:
            assert "\n" not in str(err)
            outcomes["refused"] = outcomes.get("refused", 0) + 1
        else:
            assert torch.equal(module(torch.ones(1, 3)), expected), f"case {case} loaded other weights"
            outcomes["loaded"] = outcomes.get("loaded", 0) + 1
        assert not marker.exists(), f"case {case} ran code"
    assert outcomes.get("refused", 0) > FUZZ_CASES // 2
