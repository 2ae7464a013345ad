"""Real field data: how well the white-cell finder does, where the cell sits, and what a build costs.

The finder (``runner.data.builders.wbc_fields.find_cell``) is checked on every distinct original of
the WBC set against the hand-drawn white-cell boxes of the detection set in the same repository
("Blood Cell Detection & Counting Dataset/Training": most originals are among its images, matched
here by identical decoded pixels): a finding agrees when its centre lies in a hand box. The hand
box also says how large the cell is and whether the builder's window (seed 0) keeps it whole.

Then each builder runs as a user runs it (a subprocess), timed, with its peak resident memory
beside the size of the file it wrote: the builders stream, so memory should not grow with the file.

    python benchmarks/bench_field_data.py --wbc-clone DIR [--pbc-clone DIR] [--pbc-per-class 300] [--no-write]

Clones: github.com/usmanalishams/DeepBioNet_dataset_BCCD_WBC_Classifition (commit 0b67463) and
github.com/AuralinACC/Blood-Cell-Classification (commit d2e7b75e); defaults $WBC_CLONE, $PBC_CLONE.
The built files go to a temporary folder and are removed. Writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _doc import markdown_table, own_command, stamp, write_section  # noqa: E402

from runner.data.builders import shared, wbc_fields  # noqa: E402

DETECTION = Path("Blood Cell Detection & Counting Dataset") / "Training"


def hand_boxes(clone: Path) -> dict[str, list[tuple[int, int, int, int]]]:
    """Pixel hash of each detection image -> its white-cell boxes (y0, x0, y1, x1)."""
    images, notes = clone / DETECTION / "Images", clone / DETECTION / "XML Files"
    boxes = {}
    for image in sorted(images.glob("*.jpg")):
        note = notes / f"{image.stem}.xml"
        if not note.is_file():
            continue
        found = []
        for obj in ET.parse(note).getroot().iter("object"):
            if (obj.findtext("name") or "").strip() in ("WBC", "W"):  # "W": one box's typo
                b = obj.find("bndbox")
                x0, y0, x1, y1 = (round(float(b.findtext(k))) for k in ("xmin", "ymin", "xmax", "ymax"))
                found.append((y0, x0, y1, x1))
        boxes[_pixel_hash(shared.read_rgb(image))] = found
    return boxes


def _pixel_hash(rgb: np.ndarray) -> str:
    return hashlib.sha1(rgb.tobytes()).hexdigest()


def check_finder(clone: Path, seed: int) -> dict:
    """The finder on every distinct original, against the hand boxes."""
    _, originals, _ = wbc_fields.scan(wbc_fields.dataset_folder(clone))
    hands = hand_boxes(clone)
    out = {"originals": len(originals), "found": 0, "matched": 0, "no_hand_box": 0, "agree": 0, "two_cells": 0,
           "window_keeps_hand_box": 0, "stain_share": [], "hand_share": [], "hand_side": []}
    for original in originals:
        path = original.files[0]
        rgb = shared.read_rgb(path)
        cell = wbc_fields.find_cell(rgb)
        out["found"] += cell.found
        rel = f"{path.parent.name}/{path.name}"
        top, left, side = wbc_fields.window(rgb.shape[:2], cell, np.random.default_rng([seed, zlib.crc32(rel.encode())]))
        if cell.found:
            out["stain_share"].append(cell.area / side**2)
        boxes = hands.get(_pixel_hash(rgb))
        if boxes is None:
            continue
        out["matched"] += 1
        if not boxes:
            out["no_hand_box"] += 1
            continue
        out["two_cells"] += len(boxes) > 1
        cy, cx = (cell.box[0] + cell.box[2]) / 2, (cell.box[1] + cell.box[3]) / 2
        hit = [b for b in boxes if b[0] <= cy <= b[2] and b[1] <= cx <= b[3]]
        if not (cell.found and hit):
            continue
        out["agree"] += 1
        y0, x0, y1, x1 = hit[0]
        out["window_keeps_hand_box"] += y0 >= top and x0 >= left and y1 <= top + side and x1 <= left + side
        out["hand_share"].append((y1 - y0) * (x1 - x0) / side**2)
        out["hand_side"].append(max(y1 - y0, x1 - x0))
    return out


_PEAK = ("import resource, runpy, sys\n"
         "module, sys.argv = sys.argv[1], sys.argv[1:]\n"
         "try:\n    runpy.run_module(module, run_name='__main__')\n"
         "finally:\n    print('peak_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n")


def timed_build(module: str, args: list[str]) -> dict:
    """Run a builder as a subprocess: wall seconds, its peak resident MB, the file's size and first line."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "built.npz"
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _PEAK, module, *args, "--out", str(out)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{module} failed: {done.stderr.strip()}")
        size = out.stat().st_size
    peak_kb = int(done.stderr.strip().splitlines()[-1].split()[-1])
    return {"module": module, "args": " ".join(args), "wall_s": wall, "peak_mb": peak_kb / 1024,
            "file_mb": size / 1e6, "summary": done.stdout.strip().splitlines()[0]}


def quantiles(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "n/a"
    q5, q50, q95 = np.percentile(values, [5, 50, 95]) * scale
    return f"{q50:.{digits}f} (5-95%: {q5:.{digits}f}-{q95:.{digits}f})"


def span(values: list[float]) -> str:
    low, high = f"{min(values):.0f}", f"{max(values):.0f}"
    return low if low == high else f"{low}-{high}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wbc-clone", type=Path, default=os.environ.get("WBC_CLONE"), help="default $WBC_CLONE")
    parser.add_argument("--pbc-clone", type=Path, default=os.environ.get("PBC_CLONE"), help="default $PBC_CLONE")
    parser.add_argument("--pbc-per-class", type=int, default=300, help="PBC frames per class in the timed build")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.wbc_clone is None or not Path(args.wbc_clone).is_dir():
        print(f"skipped: no WBC clone at {args.wbc_clone} (pass --wbc-clone or set WBC_CLONE)")
        return

    r = check_finder(args.wbc_clone, args.seed)
    checked = r["matched"] - r["no_hand_box"]
    finder = markdown_table(["what", "figure"], [
        ["distinct originals (duplicates merged)", r["originals"]],
        ["finder says found", f"{r['found']} of {r['originals']}"],
        ["originals among the detection images (identical pixels)", r["matched"]],
        ["... with no white-cell box drawn", r["no_hand_box"]],
        ["... with two or more white-cell boxes", r["two_cells"]],
        ["finding's centre inside a hand box", f"{r['agree']} of {checked}"],
        [f"seed-{args.seed} window keeps that hand box whole", f"{r['window_keeps_hand_box']} of {r['agree']}"],
        ["hand box, longer side (px, native)", quantiles(r["hand_side"], digits=0)],
        ["hand box, share of the 480x480 window (%)", quantiles(r["hand_share"], 100)],
        ["stained region found, share of the window (%)", quantiles(r["stain_share"], 100)],
    ])
    print(finder)
    builds = [timed_build(wbc_fields.MODULE, ["--clone", str(args.wbc_clone), "--size", "256"]),
              timed_build(wbc_fields.MODULE, ["--clone", str(args.wbc_clone)])]
    if args.pbc_clone is not None and Path(args.pbc_clone).is_dir():
        builds.append(timed_build("runner.data.builders.pbc",
                                  ["--clone", str(args.pbc_clone), "--per-class", str(args.pbc_per_class)]))
    cost = markdown_table(["builder", "flags", "wall s", "peak memory MB", "file MB", "wrote"],
                          [[b["module"].rsplit(".", 1)[1], b["args"].replace(str(args.wbc_clone), "WBC")
                            .replace(str(args.pbc_clone), "PBC"), f"{b['wall_s']:.0f}", f"{b['peak_mb']:.0f}",
                            f"{b['file_mb']:.0f}", b["summary"].split(": ", 1)[-1]] for b in builds])
    print(cost)
    peaks, files = [b["peak_mb"] for b in builds], [b["file_mb"] for b in builds]
    short = (f"**In short:** the finder found a stained cell in {r['found']} of {r['originals']} originals, and on the "
             f"{checked} that have a hand-drawn white-cell box its centre lies in one in {r['agree']}; the window keeps "
             f"the hand box whole in {r['window_keeps_hand_box']} of them. The white cell's box is "
             f"{quantiles(r['hand_side'], digits=0)} px across, {quantiles(r['hand_share'], 100)}% of a 480x480 window. "
             f"Building, peak memory is {span(peaks)} MB for files of {span(files)} MB: frames are streamed, not held.")
    print(short)
    if not args.no_write:
        argv = [Path(a).name if Path(a).is_dir() else a for a in sys.argv[1:]]  # clones by name, not this machine's path
        body = (f"{stamp(own_command('bench_field_data.py', argv))}"
                f"\n\n{short}\n\nThe white-cell finder against the hand-drawn boxes:\n\n{finder}\n\n"
                f"Building (each a subprocess; peak = its largest resident memory):\n\n{cost}\n")
        write_section("field_data", "Real field data: the white-cell finder and the builders", body)
        print("wrote docs/benchmarks.md")


if __name__ == "__main__":
    main()
