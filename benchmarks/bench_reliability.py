"""Reliability: a long run's memory, kill -9 and --resume on both backends, and hostile or careless input.

    python benchmarks/bench_reliability.py                      # ~10 minutes on 2 CPU cores
    python benchmarks/bench_reliability.py --soak-trials 60 --cycles 3 --out /tmp/rel.md   # quicker

Every trial is tiny: the test-only ``probe_net`` strategy (tests/runner/search_fixtures.py, loaded
through ``CELLSPARSE_PLUGINS``), 16 px synthetic cells, 64 training images, one epoch, one thread.

1. Soak: one ``python -m runner.search`` driver (optuna backend) runs ``--soak-trials`` trials; its RSS
   (``/proc/<pid>/status`` VmRSS) is read each time it prints a trial's line. Growth per trial = the
   least-squares slope of RSS against trials done over the second half of the run (after warm-up).
2. Kill loop, per backend: ``--cycles`` times, start the search in its own process group (the first time
   with ``--space``, then with ``--resume``), wait until one more trial is COMPLETE, SIGKILL the group;
   then one last ``--resume`` runs to the end. For the ray backend ``--pid-cycles`` more cycles SIGKILL the
   driver's pid alone, as the OOM killer or ``kill -9 PID`` would. Every process descended from the driver is recorded while
   it runs (Ray's gcs_server, raylet and workers included); those still alive 10 s after a kill are
   reported, then killed by pid. Checked at the end: exactly the requested COMPLETE trials, none RUNNING,
   no trial number completed twice (driver lines), each COMPLETE trial's folder holds its metrics.json and
   a config.json that matches the journal's parameters, and nothing of the run alive 10 s after the end.
3. Hostile and careless input: each case is run through the real command line where there is one, and
   its exit status, first line of stderr, what it wrote and its time are tabled beside what is expected
   (a full disk and a read-only folder are real mounts in a private mount namespace, ``unshare -rm``;
   where that is not allowed those cases are listed as not run).
4. Two drivers: ``--driver-rounds`` times, two drivers started at the same moment on one new run folder.
5. Predict memory: ``runner.predict`` over a folder of four 10000 x 10000 PNGs, its peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

MEM_TARGET_MB = 0.5  # RSS growth per trial in a long run
KILL_TRIALS = 12  # trials each kill loop asks for
PY = sys.executable
LINE = re.compile(r"^\[(\d+)/(\d+)\] trial (\d+)\s+(\w+)")
_WORK: list[str] = []  # the temporary folder, shown as <tmp> in the table


# ----------------------------------------------------------------------------------------------- pure parts

def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys against xs (0.0 with fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def growth_per_trial(samples: list[tuple[int, float]]) -> float:
    """MB per trial: the slope of RSS (MB) against trials done over the second half of the run."""
    if not samples:
        return 0.0
    last = max(n for n, _ in samples)
    half = [(n, mb) for n, mb in samples if n > last / 2]
    return slope([float(n) for n, _ in half], [mb for _, mb in half])


def kill_loop_ok(result: dict) -> bool:
    return (result["complete"] == result["requested"] and result["running"] == 0 and not result["twice"]
            and not result["mismatched"] and result["alive_after_end"] == 0 and result["final_status"] == 0)


def in_short(soak: dict | None, loops: list[dict], cases: list[dict], drivers: dict | None = None,
             memory: dict | None = None) -> str:
    """The section's plain-words paragraph, from this run's figures."""
    parts = []
    if soak is not None:
        mb = soak["mb_per_trial"]
        verdict = "within" if mb <= MEM_TARGET_MB else "over"
        parts.append(f"Over {soak['trials']} trials in one driver its memory grew {mb:.3f} MB per trial after warm-up "
                     f"({verdict} the {MEM_TARGET_MB:g} MB target)")
    for loop in loops:
        state = ("ended with exactly the requested trials, none run twice" if kill_loop_ok(loop)
                 else "did NOT end clean (see the table)")
        names = ", ".join(loop.get("lingering_names", []))
        linger = (f", but {loop['lingering_max']} of its processes ({names}) outlived a kill by 10 s and had to be "
                  "stopped" if loop["lingering_max"] else "")
        who = f"the {loop['backend']} backend" + ("" if loop.get("group", True) else " with the driver's pid alone killed")
        parts.append(f"{who} survived {loop['cycles_survived']} of {loop['cycles']} kill -9 cycles and {state}{linger}")
    if drivers is not None:
        good = sum(r["ok"] for r in drivers["rounds"])
        parts.append(f"two drivers started together on one run folder: in {good} of {drivers['requested_rounds']} "
                     "rounds exactly one ran and the other exited 2 with one line naming it, the run ending with "
                     f"exactly its {drivers['trials']} trials, none run twice")
    if memory is not None:
        verdict = "under" if memory["peak_mb"] < PREDICT_MB_TARGET else "OVER"
        parts.append(f"predict over {memory['images']} PNGs of {memory['side']} x {memory['side']} pixels peaked at "
                     f"{memory['peak_mb']:.0f} MB ({verdict} the {PREDICT_MB_TARGET / 1024:g} GB target)")
    text = "; ".join(parts)
    text = text[:1].upper() + text[1:] + "." if text else ""
    if cases:
        ran = [c for c in cases if c["ok"] is not None]
        bad = [c["case"] for c in ran if not c["ok"]]
        tail = (f"All {len(ran)} hostile or careless inputs got the expected outcome." if not bad else
                f"{len(ran) - len(bad)} of {len(ran)} hostile or careless inputs got the expected outcome; "
                f"not: {', '.join(bad)}.")
        skipped = [c for c in cases if c["ok"] is None]
        if skipped:
            tail += f" Not run here: {', '.join(c['case'] for c in skipped)} ({skipped[0]['wrote']})."
        text = (text + " " + tail).strip()
    return "**In short:** " + text


# ----------------------------------------------------------------------------------------------- processes

def _env(**extra: str) -> dict[str, str]:
    from tests.runner.search_fixtures import plugins_env

    env = dict(os.environ)
    paths = [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), CELLSPARSE_PLUGINS=plugins_env(),
               PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update(extra)
    return env


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time in clock ticks, command name) of a live process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1: text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19]), name


def _table() -> dict[int, tuple[int, int, str]]:
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _stat(int(entry))
            if info:
                found[int(entry)] = info
    return found


def _name(pid: int, comm: str) -> str:
    """Ray names its workers and agents in argv[0] (``ray::DashboardAgent``); /proc's comm cuts them at 15 characters."""
    try:
        first = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return comm
    return first.split()[0] if first.startswith("ray::") else comm


def descendants(root: int, table: dict[int, tuple[int, int, str]] | None = None) -> dict[tuple[int, int], str]:
    """{(pid, start time): name} of ``root`` and every process below it."""
    table = table or _table()
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out[(pid, table[pid][1])] = _name(pid, table[pid][2])
            todo += [p for p, info in table.items() if info[0] == pid]
    return out


def alive(known: dict[tuple[int, int], str]) -> dict[tuple[int, int], str]:
    """Those of ``known`` still running (the same pid with the same start time), with their descendants."""
    table = _table()
    out = {}
    for (pid, start), _ in known.items():
        if pid in table and table[pid][1] == start:
            out.update(descendants(pid, table))
    return out


def mentioning(text: str) -> dict[tuple[int, int], str]:
    """Live processes (not this one) whose command line contains ``text``."""
    out = {}
    for pid, info in _table().items():
        if pid == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out[(pid, info[1])] = info[2]
    return out


def stop(procs: dict[tuple[int, int], str]) -> None:
    for pid, start in procs:
        info = _stat(pid)
        if info and info[1] == start:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# ----------------------------------------------------------------------------------------------- 1. soak

def soak(work: Path, trials: int) -> dict:
    from tests.runner.search_fixtures import write_space

    space = write_space(work, name="soak", trials=trials)
    run = work / "soak"
    start = time.perf_counter()
    proc = subprocess.Popen([PY, "-m", "runner.search", "--space", str(space), "--out", str(run)], cwd=work,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    samples: list[tuple[int, float]] = []
    states: dict[str, int] = {}
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-5:]
        m = LINE.match(line)
        if m:
            mb = rss_mb(proc.pid)
            if mb is not None:
                samples.append((int(m.group(1)), mb))
            states[m.group(4)] = states.get(m.group(4), 0) + 1
    status = proc.wait()
    wall = time.perf_counter() - start
    if status != 0:
        print("\n".join(tail))
    result = {
        "trials": trials, "status": status, "wall_s": wall, "states": states, "samples": samples,
        "mb_per_trial": growth_per_trial(samples),
        "rss_first": samples[0][1] if samples else float("nan"),
        "rss_half": next((mb for n, mb in samples if n > trials / 2), float("nan")),
        "rss_last": samples[-1][1] if samples else float("nan"),
    }
    shutil.rmtree(run, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------------------------- 2. kill loop

def _complete_in_csv(run: Path) -> int:
    from tests.runner.search_fixtures import read_trials

    try:
        return sum(r["state"] == "COMPLETE" for r in read_trials(run))
    except (OSError, ValueError, KeyError):
        return -1


def kill_loop(work: Path, backend: str, cycles: int, trials: int = KILL_TRIALS, *, group: bool = True) -> dict:
    from cellsparse.rundir import check_journal
    from tests.runner.search_fixtures import journal_trials, write_space

    name = f"kill_{backend}" + ("" if group else "_pid")
    space = write_space(work, name=name, trials=trials, backend=backend)
    run = work / name
    logs = work / f"{name}.log"
    env = _env(PROBE_SLEEP_S="0.1")
    known: dict[tuple[int, int], str] = {}
    survived, lingering, per_cycle = 0, [], []
    start = time.perf_counter()
    for cycle in range(cycles + 1):
        final = cycle == cycles
        args = ["--space", str(space), "--out", str(run)] if cycle == 0 else ["--out", str(run), "--resume"]
        before = max(_complete_in_csv(run), 0) if run.exists() else 0
        with open(logs, "a") as log:
            log.write(f"=== cycle {cycle}{' (final)' if final else ''}\n")
            log.flush()
            proc = subprocess.Popen([PY, "-m", "runner.search", *args], cwd=work, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            mine: dict[tuple[int, int], str] = {}
            deadline = time.monotonic() + (600 if final else 300)
            killed = False
            while time.monotonic() < deadline:
                mine.update(descendants(proc.pid))
                if proc.poll() is not None:
                    break
                if not final and _complete_in_csv(run) > before:
                    mine.update(descendants(proc.pid))
                    if group:
                        os.killpg(proc.pid, signal.SIGKILL)
                    else:  # what the OOM killer or `kill -9 <pid>` does: the driver alone
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    killed = True
                    break
                time.sleep(0.2)
            else:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        known.update(mine)
        if killed:
            time.sleep(10)
            left = alive(mine) | mentioning(str(run))
            lingering.append(left)
            stop(left)
            survived += 1
        per_cycle.append({"cycle": cycle, "killed": killed, "status": proc.returncode,
                          "complete": _complete_in_csv(run), "tree": len(mine),
                          "lingering": sorted(set(left.values())) if killed else []})
        if final:
            final_status = proc.returncode
        elif not killed:  # it finished (or timed out) before a kill: no more cycles to run
            final_status = proc.returncode
            break
    wall = time.perf_counter() - start
    time.sleep(10)
    after_end = alive(known) | mentioning(str(run))
    stop(after_end)

    journal = journal_trials(run, name)
    states = [t.state.name for t in journal]
    counts: dict[int, int] = {}
    for line in logs.read_text().splitlines():
        m = LINE.match(line)
        if m and m.group(4) == "COMPLETE":
            counts[int(m.group(3))] = counts.get(int(m.group(3)), 0) + 1
    mismatched = []
    trained_not_told = []
    for t in journal:
        folder = run / "trials" / str(t.number)
        if t.state.name != "COMPLETE":
            if (folder / "metrics.json").is_file():
                trained_not_told.append(t.number)
            continue
        try:
            config = json.loads((folder / "config.json").read_text())
            ok = (folder / "metrics.json").is_file() and all(
                _same(config.get(k.split(".")[-1], config.get(k)), v) for k, v in t.params.items())
        except (OSError, ValueError):
            ok = False
        if not ok:
            mismatched.append(t.number)
    return {
        "backend": backend, "group": group,
        "label": backend if group else f"{backend}, driver pid only", "cycles": cycles, "cycles_survived": survived,
        "requested": trials,
        "complete": states.count("COMPLETE"), "running": states.count("RUNNING"), "failed": states.count("FAIL"),
        "twice": sorted(n for n, c in counts.items() if c > 1), "mismatched": mismatched,
        "trained_not_told": trained_not_told, "journal_ok": _journal_ok(check_journal, run),
        "lingering_max": max((len(x) for x in lingering), default=0),
        "lingering_cycles": sum(1 for x in lingering if x),
        "lingering_names": sorted({n for x in lingering for n in x.values()}),
        "tree_max": max((c["tree"] for c in per_cycle), default=0),
        "tree_names": sorted({n for n in known.values()}),
        "alive_after_end": len(after_end), "final_status": final_status, "wall_s": wall, "per_cycle": per_cycle,
    }


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def _journal_ok(check_journal, run: Path) -> bool:  # noqa: ANN001
    try:
        return check_journal(run) is None
    except Exception:  # noqa: BLE001 - a damaged journal is the finding
        return False


# ----------------------------------------------------------------------------------------------- 3. hostile input

def _cli(args: list[str], cwd: Path, timeout: float = 300) -> tuple[int, str, str, float]:
    start = time.perf_counter()
    done = subprocess.run([PY, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr, time.perf_counter() - start


def _first(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    return lines[0][:160] if lines else ""


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else {}


def _case(rows: list[dict], case: str, given: str, expected: str, status: int, err: str, wrote: str, seconds: float,
          ok: bool) -> None:
    first = _first(err).replace("|", "\\|")
    for work in _WORK:
        first = first.replace(work, "<tmp>")
    if len(first) > 110:
        first = first[:107] + "..."
    rows.append({"case": case, "given": given, "expected": expected, "status": status, "stderr": first,
                 "wrote": wrote, "seconds": seconds, "ok": bool(ok)})
    print(f"[{'ok' if ok else 'UNEXPECTED'}] {case}: status {status}, {seconds:.1f} s, {wrote}; {first}", flush=True)


def _space_variant(work: Path, name: str, old: str, new: str, backend: str = "optuna") -> Path:
    from tests.runner.search_fixtures import write_space

    path = write_space(work, name=name, trials=1, backend=backend)
    text = path.read_text()
    assert old in text, (old, text)
    path.write_text(text.replace(old, new))
    return path


def hostile(work: Path) -> list[dict]:
    from cellsparse.errors import UserError
    from search_space.spec import load_space
    from tests.runner.export_fixtures import search, space_text
    from tests.runner.pt2_crafted import craft
    from tests.runner.search_fixtures import write_space

    rows: list[dict] = []
    _WORK.append(str(work))

    # A finished export of a tiny dense_cnn run, with the user's predictions.csv beside it.
    run = search(work, "tiny_dense", space_text("tiny_dense", "dense_cnn"))
    export = work / "export"
    status, _, err, _ = _cli(["-m", "runner.export", str(run), "--formats", "pt2", "--no-latency", "--out", str(export)],
                             work)
    if status != 0:
        raise SystemExit(f"the first export failed ({status}): {err}")
    (export / "predictions.csv").write_text("input,predicted\na.png,x\n")
    status, _, err, took = _cli(["-m", "runner.export", str(run), "--formats", "pt2", "--no-latency", "--out",
                                 str(export)], work)
    kept = (export / "predictions.csv").read_text() == "input,predicted\na.png,x\n"
    _case(rows, "export over a folder holding predictions.csv", "`runner.export RUN --out DIR` again, DIR has predictions.csv",
          "exit 0, predictions.csv kept", status, err, "export replaced, predictions.csv " + ("kept" if kept else "LOST"),
          took, status == 0 and kept)

    # A crafted .pt2 that runs `touch` when unpickled, given to runner.predict.
    evil_dir = work / "evil_export"
    shutil.copytree(export, evil_dir)
    marker = work / "code_ran"
    craft(export / "model.pt2", evil_dir / "model.pt2", "pickled_weight", marker)
    import numpy as np
    from PIL import Image

    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(work / "cell.png")
    csv = work / "evil_predictions.csv"
    status, _, err, took = _cli(["-m", "runner.predict", str(evil_dir), str(work / "cell.png"), "--format", "pt2",
                                 "--out", str(csv)], work)
    ran = marker.exists()
    _case(rows, "crafted .pt2 (pickled weight runs `touch`)", "`runner.predict EXPORT cell.png --format pt2`",
          "refused, no code run", status, err, ("CODE RAN" if ran else "no code ran") + (", CSV written" if csv.exists()
                                                                                        else ", nothing written"),
          took, status != 0 and not ran and not csv.exists())

    # Journal damage on a finished one-trial probe run.
    base = work / "probe_base"
    space = write_space(work, name="probe", trials=1)
    status, _, err, _ = _cli(["-m", "runner.search", "--space", str(space), "--out", str(base)], work)
    if status != 0:
        raise SystemExit(f"the probe run failed ({status}): {err}")

    torn = work / "torn"
    shutil.copytree(base, torn)
    fragment = b'{"op_code":5,"worker_id":"w","trial_id":0,"us'
    journal = torn / "study.journal"
    intact = journal.read_bytes()
    journal.write_bytes(intact + fragment)
    status, _, err, took = _cli(["-m", "runner.search", "--out", str(torn), "--resume", "--trials", "2"], work)
    repaired = journal.read_bytes().startswith(intact) and journal.read_bytes().endswith(b"\n")
    warned = "dropped those" in err
    _case(rows, "torn last journal line", "`--resume` after a 46-byte fragment is appended to study.journal",
          "repaired with a warning, run goes on", status, err,
          ("fragment cut, " if repaired else "journal NOT repaired, ") + ("warned" if warned else "no warning"), took,
          status == 0 and repaired and warned)

    broken = work / "broken"
    shutil.copytree(base, broken)
    lines = (broken / "study.journal").read_bytes().splitlines(keepends=True)
    lines[2] = b'{"op_code": 4, "trial_id"\n'
    (broken / "study.journal").write_bytes(b"".join(lines))
    before = _files(broken)
    status, _, err, took = _cli(["-m", "runner.search", "--out", str(broken), "--resume", "--trials", "2"], work)
    same = _files(broken) == before
    one_line = err.strip().count("\n") == 0
    _case(rows, "corrupt journal line mid-file", "`--resume` with line 3 of study.journal cut short",
          "exit 2, one error line naming the line, nothing written", status, err,
          ("nothing written" if same else "RUN CHANGED") + ("" if one_line else f", {err.strip().count(chr(10)) + 1} lines"),
          took, status == 2 and same and one_line and "line 3" in err)

    # Oversized space files: refused before anything is built; the parse time is what must stay < 1 s.
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    oversized = {
        "alias bomb (9 levels of 9 aliases)": "anchors:\n" + "".join(f"  {line}\n" for line in levels) + "objectives: *a8\n",
        "5,000-deep nesting": "objectives: " + "[" * 5000 + "]" * 5000 + "\n",
        "huge list (150,000 items)": "objectives: [" + ",".join(["0"] * 150_000) + "]\n",
    }
    for case, text in oversized.items():
        path = work / f"oversized_{len(rows)}.yaml"
        path.write_text(text)
        start = time.perf_counter()
        try:
            load_space(path)
            parsed = False
        except UserError:
            parsed = True
        parse_s = time.perf_counter() - start
        out = work / f"out_{len(rows)}"
        status, _, err, took = _cli(["-m", "runner.search", "--space", str(path), "--out", str(out)], work)
        _case(rows, case, f"`--space` a {len(text):,}-byte file", "refused in < 1 s, one line", status, err,
              f"nothing written; parse refused in {parse_s:.3f} s" if not out.exists() else "RUN DIR WRITTEN", took,
              status == 2 and parsed and parse_s < 1.0 and not out.exists() and err.strip().count("\n") == 0)

    careless = [
        ("`lr: .nan`", _space_variant(work, "nanlr", "lr: {log: [1.0e-3, 1.0e-2]}", "lr: .nan"), []),
        ("`accuracy: minimize`", _space_variant(work, "minacc", "accuracy: maximize", "accuracy: minimize"), []),
        ("`--cpus-per-trial inf`", write_space(work, name="cpuinf", trials=1), ["--cpus-per-trial", "inf"]),
    ]
    for case, path, extra in careless:
        out = work / f"out_{len(rows)}"
        status, _, err, took = _cli(["-m", "runner.search", "--space", str(path), "--out", str(out), *extra], work)
        _case(rows, case, "`runner.search --space FILE" + "".join(" " + e for e in extra) + "`", "refused, one line",
              status, err, "nothing written" if not out.exists() else "RUN DIR WRITTEN", took,
              status == 2 and not out.exists() and err.strip().count("\n") == 0)

    # NaN pixels in an npz (the test's own builders).
    from tests.runner.test_search import _nan_images, _npz, _npz_space

    data = _npz(work / "nan.npz", dtype=np.float32, train_images=_nan_images())
    space = _npz_space(work, f"npz, path: {data}", name="nanpix")
    out = work / "out_nanpix"
    status, stdout, err, took = _cli(["-m", "runner.search", "--space", str(space), "--out", str(out)], work)
    trained = "trial" in stdout
    _case(rows, "NaN pixels in an npz", "`--space` over an npz with one NaN pixel in train_images",
          "refused before any trial", status, err,
          ("a trial ran" if trained else "no trial") + (", run dir written" if out.exists() else ", nothing written"), took,
          status == 2 and not trained and not out.exists())

    # --address to an open port that is not Ray.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve() -> None:
        with server:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(64)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                time.sleep(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    space = write_space(work, name="addr", trials=1, backend="ray")
    out = work / "out_addr"
    status, _, err, took = _cli(["-m", "runner.search", "--space", str(space), "--out", str(out), "--address",
                                 f"127.0.0.1:{port}"], work, timeout=120)
    thread.join(timeout=5)
    _case(rows, "`--address` to a port that is not Ray", "an HTTP server answering 400 on 127.0.0.1",
          "one line in < 10 s", status, err, "nothing written" if not out.exists() else "RUN DIR WRITTEN", took,
          status == 2 and took < 10 and err.strip().count("\n") == 0)
    return rows + findings(work, export, base)


# ----------------------------------------------------------------------------------------------- 4. two drivers

DRIVER_ROUNDS = 10
DRIVER_TRIALS = 3
IN_USE = "in use by a running search"


def drivers_ok(result: dict) -> bool:
    """Every round: exactly one driver ran (exit 0), the other exited 2 with one line naming the live one,
    the run ended with exactly the requested trials, none run twice."""
    return all(r["ok"] for r in result["rounds"]) and len(result["rounds"]) == result["requested_rounds"]


def two_drivers(work: Path, rounds: int = DRIVER_ROUNDS, trials: int = DRIVER_TRIALS) -> dict:
    """``rounds`` times: two ``runner.search`` drivers started at the same moment on one new run folder."""
    from tests.runner.search_fixtures import journal_trials, write_space

    space = write_space(work, name="twins", trials=trials)
    env = _env(PROBE_SLEEP_S="0.05")  # trials last a few seconds: the winner is alive while the loser checks
    results = []
    for round_ in range(rounds):
        run = work / f"twins_{round_}"
        start = time.perf_counter()
        procs = [subprocess.Popen([PY, "-m", "runner.search", "--space", str(space), "--out", str(run)], cwd=work,
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outs = [p.communicate(timeout=600) for p in procs]
        wall = time.perf_counter() - start
        codes = [p.returncode for p in procs]
        loser = next((i for i, c in enumerate(codes) if c == 2), None)
        line = _first(outs[loser][1]) if loser is not None else ""
        one_line = loser is not None and outs[loser][1].strip().count("\n") == 0 and outs[loser][0] == ""
        winner_pid = procs[1 - loser].pid if loser is not None else None
        final = journal_trials(run, "twins") if (run / "study.journal").is_file() else []
        complete = [t.number for t in final if t.state.name == "COMPLETE"]
        folders = sorted(int(p.name) for p in (run / "trials").iterdir()) if (run / "trials").is_dir() else []
        ok = (sorted(codes) == [0, 2] and one_line and IN_USE in line and f"pid {winner_pid}" in line
              and len(complete) == trials and len(set(complete)) == len(complete) and len(final) == trials
              and folders == sorted(complete) and not (run / "driver.lock").exists())
        for work_dir in _WORK:
            line = line.replace(work_dir, "<tmp>")
        results.append({"round": round_ + 1, "codes": codes, "line": line, "complete": len(complete),
                        "trials": len(final), "twice": len(complete) - len(set(complete)), "folders": len(folders),
                        "wall_s": wall, "ok": ok})
        print(f"[{'ok' if ok else 'UNEXPECTED'}] two drivers, round {round_ + 1}: exits {codes}, {len(complete)} "
              f"complete of {trials}; {line[:120]}", flush=True)
        shutil.rmtree(run, ignore_errors=True)
    return {"requested_rounds": rounds, "trials": trials, "rounds": results}


# ----------------------------------------------------------------------------------------------- 5. predict memory

PREDICT_MB_TARGET = 1024


#: Runs a command as its own child and writes that child's peak RSS (KB) to a file. A process forked from
#: this (large) benchmark would inherit its high-water mark through exec; a grandchild of a small
#: launcher does not, so ``ru_maxrss`` is the command's own.
_LAUNCHER = ("import resource, subprocess, sys; status = subprocess.run(sys.argv[2:]).returncode; "
             "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
             "sys.exit(status)")


def _peak_rss_mb(args: list[str], cwd: Path) -> tuple[int, float, str, float]:
    """(exit status, peak RSS in MB, stderr, seconds) of one command (``ru_maxrss`` through ``_LAUNCHER``)."""
    figure = cwd / f"maxrss_{uuid_hex()}.txt"
    start = time.perf_counter()
    done = subprocess.run([PY, "-c", _LAUNCHER, str(figure), *args], cwd=cwd, env=_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, timeout=1800)
    peak = int(figure.read_text()) / 1024 if figure.exists() else float("nan")
    return done.returncode, peak, done.stderr, time.perf_counter() - start


def predict_memory(work: Path, export: Path, images: int = 4, side: int = 10_000) -> dict:
    """``runner.predict`` over a folder of ``images`` PNGs of ``side`` x ``side`` RGB pixels: its peak RSS."""
    from PIL import Image, ImageDraw

    folder = work / "huge_pngs"
    folder.mkdir(exist_ok=True)
    for i in range(images):
        image = Image.new("RGB", (side, side), (200, 190, 210))
        ImageDraw.Draw(image).ellipse((side * (30 + 3 * i) // 100, side * 3 // 10, side * 7 // 10, side * 7 // 10),
                                      fill=(120, 60, 140))
        image.save(folder / f"cell{i}.png", optimize=True)
        del image
    sizes = [p.stat().st_size for p in sorted(folder.iterdir())]
    csv = work / "huge_predictions.csv"
    status, peak, err, seconds = _peak_rss_mb([PY, "-m", "runner.predict", str(export), str(folder), "--format",
                                               "pt2", "--out", str(csv)], work)
    rows = csv.read_text().count("\n") - 1 if csv.exists() else 0
    baseline_png = work / "small.png"
    Image.new("RGB", (24, 24), (200, 190, 210)).save(baseline_png)
    _, floor, _, _ = _peak_rss_mb([PY, "-m", "runner.predict", str(export), str(baseline_png), "--format", "pt2",
                                   "--out", str(work / "small_predictions.csv")], work)
    result = {"images": images, "side": side, "file_kb": [round(s / 1024) for s in sizes], "status": status,
              "peak_mb": peak, "floor_mb": floor, "classified": rows, "seconds": seconds, "stderr": _first(err),
              "ok": status == 0 and rows == images and peak < PREDICT_MB_TARGET}
    print(f"[{'ok' if result['ok'] else 'UNEXPECTED'}] predict over {images} PNGs of {side}x{side}: peak "
          f"{peak:.0f} MB (one small image: {floor:.0f} MB), exit {status}", flush=True)
    shutil.rmtree(folder, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------------------------- 3b. this round's findings

def _unshare() -> str | None:
    """Why a private mount namespace (for a small tmpfs, a read-only bind mount) is not available, or None."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>&1 || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp 2>&1"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"cannot mount in a private namespace ({_first(probe.stdout + probe.stderr)})"


def _in_namespace(script: str, work: Path, timeout: float = 600) -> tuple[int, str, str]:
    """Run a shell ``script`` in a private user and mount namespace (its mounts vanish with it)."""
    path = work / f"ns_{uuid_hex()}.sh"
    path.write_text("set -u\n" + script)
    done = subprocess.run(["unshare", "-rm", "sh", str(path)], cwd=work, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def uuid_hex() -> str:
    import uuid

    return uuid.uuid4().hex[:8]


def _skipped(rows: list[dict], case: str, given: str, expected: str, why: str) -> None:
    rows.append({"case": case, "given": given, "expected": expected, "status": "-", "stderr": "", "wrote": why,
                 "seconds": 0.0, "ok": None})
    print(f"[skipped] {case}: {why}", flush=True)


def _memory_export(work: Path) -> Path:
    """A .pt2 export of a tiny dense_cnn run (the one the hostile cases made, when they ran)."""
    export = work / "export"
    if (export / "model.pt2").is_file():
        return export
    from tests.runner.export_fixtures import search, space_text

    run = search(work, "tiny_dense", space_text("tiny_dense", "dense_cnn"))
    status, _, err, _ = _cli(["-m", "runner.export", str(run), "--formats", "pt2", "--no-latency", "--out", str(export)],
                             work)
    if status != 0:
        raise SystemExit(f"the export for the memory case failed ({status}): {err}")
    return export


def findings(work: Path, export: Path, probe_run: Path) -> list[dict]:
    """One case per finding of the third reliability round (issue 29), run as a user would."""
    import numpy as np
    from PIL import Image

    from tests.runner.pt2_crafted import craft, duplicated, mutate, read_entries
    from tests.runner.search_fixtures import journal_trials, write_space

    rows: list[dict] = []
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(work / "cell29.png")
    image = work / "cell29.png"

    # HIGH: repeated entry names in a .pt2 (the copy torch reads is not the one zipfile shows)
    for target, first in (("weights_config", True), ("sample_inputs", False)):
        evil = work / f"dup_{target}"
        shutil.copytree(export, evil)
        marker = work / f"ran_{target}"
        duplicated(export / "model.pt2", evil / "model.pt2", target, marker, harmful_first=first)
        csv = work / f"dup_{target}.csv"
        status, _, err, took = _cli(["-m", "runner.predict", str(evil), str(image), "--format", "pt2", "--out",
                                     str(csv)], work)
        ran = marker.exists()
        _case(rows, f".pt2 with a repeated entry name ({target}, harmful copy {'first' if first else 'last'})",
              "`runner.predict EXPORT cell.png --format pt2`", "refused, no code run", status, err,
              ("CODE RAN" if ran else "no code ran") + (", CSV written" if csv.exists() else ", nothing written"),
              took, status == 2 and not ran and not csv.exists() and err.strip().count("\n") == 0)

    import random

    from cellsparse.errors import UserError
    from runner.engine.pt2 import load_program

    rng, marker = random.Random(29), work / "ran_fuzz"
    clean = export / "model.pt2"
    bases = [read_entries(clean)] + [read_entries(craft(clean, work / f"craft_{how}.pt2", how, marker))
                                     for how in ("pickled_weight", "sample_inputs", "opaque_constant")]
    counts = {"refused": 0, "loaded the clean model": 0, "other error": 0}
    start = time.perf_counter()
    fuzz = 1000
    for _ in range(fuzz):
        path = work / "fuzz.pt2"
        path.write_bytes(mutate(rng.choice(bases), clean.read_bytes(), rng, marker))
        try:
            load_program(path)
            counts["loaded the clean model"] += 1
        except UserError:
            counts["refused"] += 1
        except Exception:  # noqa: BLE001 - anything but a one-line refusal is a finding
            counts["other error"] += 1
    took = time.perf_counter() - start
    _case(rows, f"{fuzz} fuzzed .pt2 archives", "repeated, case-twin, folder, renamed entries; flipped, cut, "
          "prepended, concatenated bytes", "each refused or the clean model; no code run", 0, "",
          ", ".join(f"{v} {k}" for k, v in counts.items()) + (", CODE RAN" if marker.exists() else ", no code ran"),
          took, counts["other error"] == 0 and not marker.exists())

    # MEDIUM: --resume (and a fresh search) while the first driver is alive; Ctrl-C gives its lock back
    space = write_space(work, name="alive", trials=4)
    run = work / "alive"
    first = subprocess.Popen([PY, "-m", "runner.search", "--space", str(space), "--out", str(run)], cwd=work,
                             env=_env(PROBE_SLEEP_S="30"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first.stdout.readline()  # "run ...": the first driver holds the lock from before this line (and trains for minutes)
    for case, args in (("`--resume` while the first driver is alive", ["--out", str(run), "--resume"]),
                       ("a second search on the same `--out`", ["--space", str(space), "--out", str(run)])):
        status, out, err, took = _cli(["-m", "runner.search", *args], work)
        one = err.strip().count("\n") == 0 and out == ""
        _case(rows, case, "`runner.search " + " ".join(a.replace(str(work), "<tmp>") for a in args) + "`",
              "exit 2, one line naming the live driver", status, err,
              "nothing written" if one else "PRINTED MORE", took,
              status == 2 and one and IN_USE in err and f"pid {first.pid}" in err)
    alive = first.poll() is None
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=300)
    lock_left = (run / "driver.lock").exists()
    status, _, err, took = _cli(["-m", "runner.search", "--out", str(run), "--resume"], work)
    final = [t.state.name for t in journal_trials(run, "alive")]
    _case(rows, "... the first driver stopped by Ctrl-C, then `--resume`", "the run both were refused on",
          "first exits 130 and gives its lock back; the resume ends with exactly 4 trials", status, err,
          f"first: {'alive during both' if alive else 'ENDED EARLY'}, exit {first.returncode}, lock "
          f"{'LEFT' if lock_left else 'given back'}; {final.count('COMPLETE')} COMPLETE of {len(final)}", took,
          alive and first.returncode == 130 and not lock_left and status == 0 and final.count("COMPLETE") == 4
          and "RUNNING" not in final)

    # MEDIUM: a decompression bomb (the header of a 30000 x 30000 PNG in 70 bytes)
    import struct
    import zlib

    bomb = work / "bomb" / "huge.png"
    bomb.parent.mkdir()
    Image.new("L", (1, 1)).save(bomb)
    raw = bytearray(bomb.read_bytes())
    at = raw.index(b"IHDR")
    raw[at + 4: at + 12] = struct.pack(">II", 30_000, 30_000)
    raw[at + 17: at + 21] = struct.pack(">I", zlib.crc32(bytes(raw[at: at + 17])) & 0xFFFFFFFF)
    bomb.write_bytes(bytes(raw))
    csv = work / "bomb.csv"
    status, _, err, took = _cli(["-m", "runner.predict", str(export), str(bomb.parent), "--out", str(csv)], work)
    _case(rows, "PNG header claiming 30000 x 30000 pixels", f"`runner.predict EXPORT folder/` ({len(raw)}-byte file)",
          "one line naming the file and the limit", status, err, "nothing written" if not csv.exists() else "CSV WRITTEN",
          took, status == 2 and "huge.png" in err and "134,217,728" in err and err.strip().count("\n") == 0)

    # LOW: someone else's model card
    theirs = work / "their_folder"
    theirs.mkdir()
    for name in ("model_card.json", "README.md", "model.onnx"):
        (theirs / name).write_text(f"someone else's {name}\n")
    before = _files(theirs)
    status, _, err, took = _cli(["-m", "runner.export", str(probe_run), "--formats", "pt2", "--no-latency", "--out",
                                 str(theirs)], work)
    _case(rows, "export into a folder holding someone else's model_card.json", "`runner.export RUN --out DIR`",
          "refused, one line, their files kept", status, err, "their files kept" if _files(theirs) == before
          else "THEIR FILES CHANGED", took, status == 2 and _files(theirs) == before and err.strip().count("\n") == 0)

    # LOW: predict --out onto the input image, the model
    for what, target in (("the input image", image), ("the model", export / "model.pt2")):
        before = target.read_bytes()
        status, _, err, took = _cli(["-m", "runner.predict", str(export), str(image), "--format", "pt2", "--out",
                                     str(target)], work)
        kept = target.read_bytes() == before
        _case(rows, f"`predict --out` {what}", f"`runner.predict EXPORT cell.png --out {target.name}`",
              "refused, one line, file kept", status, err, "kept" if kept else "OVERWRITTEN", took,
              status == 2 and kept and err.strip().count("\n") == 0)

    # LOW: huge finite float pixels; an image without pixels
    for case, array in (("float pixels of 3e38 in an npz", np.full((2, 16, 16, 3), 3e38, np.float32)),
                        ("0 x 0 images in an npz", np.zeros((2, 0, 0, 3), np.uint8))):
        data = work / f"low_{len(rows)}.npz"
        np.savez(data, test_images=array)
        csv = work / f"low_{len(rows)}.csv"
        status, out, err, took = _cli(["-m", "runner.predict", str(export), str(data), "--format", "pt2", "--out",
                                       str(csv)], work)
        _case(rows, case, "`runner.predict EXPORT data.npz`", "refused, one line, no class named", status, err,
              "nothing written" if not csv.exists() else "CSV WRITTEN", took,
              status == 2 and not csv.exists() and err.strip().count("\n") == 0 and "classified" not in out)
    from runner.predict import predict

    start = time.perf_counter()
    try:
        predict(export, np.zeros((0, 0), np.float32))
        status, err = 0, ""
    except UserError as error:
        status, err = 2, f"UserError: {error}"
    except Exception as error:  # noqa: BLE001
        status, err = 1, f"{type(error).__name__}: {error}"
    _case(rows, "predict on a 0 x 0 array (Python API)", "`runner.predict.predict(EXPORT, np.zeros((0, 0)))`",
          "UserError, one line", status, err, "-", time.perf_counter() - start, err.startswith("UserError")
          and "\n" not in err)

    # LOW: plugins
    (work / "broken29.py").write_text("raise RuntimeError('half-installed package')\n")
    space = write_space(work, name="plug", trials=1)
    for value in ("..evil", "broken29"):
        out_dir = work / f"plug_{len(rows)}"
        env = _env(CELLSPARSE_PLUGINS=value, PYTHONPATH=os.pathsep.join([str(ROOT), str(work)]))
        start = time.perf_counter()
        done = subprocess.run([PY, "-m", "runner.search", "--space", str(space), "--out", str(out_dir)], cwd=work,
                              env=env, capture_output=True, text=True, timeout=300)
        _case(rows, f"`CELLSPARSE_PLUGINS={value}`", "`runner.search --space FILE`", "refused, one line",
              done.returncode, done.stderr, "nothing written" if not out_dir.exists() else "RUN DIR WRITTEN",
              time.perf_counter() - start, done.returncode == 2 and not out_dir.exists()
              and done.stderr.strip().count("\n") == 0)

    # LOW: --resume after the run's own space.yaml was edited
    edited = work / "edited"
    shutil.copytree(probe_run, edited)
    text = (edited / "space.yaml").read_text()
    (edited / "space.yaml").write_text(text.replace("flops: minimize", "flops: maximize"))
    before = _files(edited)
    status, _, err, took = _cli(["-m", "runner.search", "--out", str(edited), "--resume", "--trials", "2"], work)
    _case(rows, "`--resume` after the run's space.yaml was edited", "`flops: minimize` changed to `maximize`",
          "refused, one line, nothing written", status, err, "nothing written" if _files(edited) == before
          else "RUN CHANGED", took, status == 2 and _files(edited) == before and err.strip().count("\n") == 0)

    # LOW: --dry-run --trials 99999999999
    start = time.perf_counter()
    done = subprocess.run([PY, "-m", "runner.search", "--space", str(space), "--dry-run", "--trials", "99999999999"],
                          cwd=work, env=_env(), capture_output=True, text=True, timeout=300)
    shown = done.stdout.count('"strategy"')
    _case(rows, "`--dry-run --trials 99999999999`", "`runner.search --space FILE --dry-run --trials 99999999999`",
          "a capped list that says so", done.returncode, done.stderr, f"{shown} configs printed",
          time.perf_counter() - start, done.returncode == 0 and shown == 100 and "prints at most 100" in done.stdout)

    # LOW: a full disk mid-run, and export / report into a read-only folder (real mounts, private namespace)
    why = _unshare()
    full_case = ("a full disk mid-run (tmpfs of 160 KB)", "`runner.search --out` on the full tmpfs, then "
                 "`--resume` after it grew to 20 MB", "one line, exit 2; the resume ends with exactly 8 trials")
    ro_cases = [("export into a read-only folder", "`runner.export RUN --out RO/export`", "one line, nothing written"),
                ("report into a read-only folder", "`reports.build RUN --out RO/report.html`", "one line, nothing written")]
    if why is not None:
        _skipped(rows, *full_case, why)
        for case in ro_cases:
            _skipped(rows, *case, why)
        return rows
    disk = work / "disk"
    disk.mkdir()
    space = write_space(work, name="full", trials=8)
    check = ("import json, sys; from tests.runner.search_fixtures import journal_trials; "
             "t = journal_trials(sys.argv[1], 'full'); print('STATES ' + json.dumps([x.state.name for x in t]))")
    script = f"""
mount -t tmpfs -o size=160k tmpfs {disk}
{PY} -m runner.search --space {space} --out {disk}/run > {work}/full_1.out 2> {work}/full_1.err
echo "FIRST $?"
mount -o remount,size=20m {disk}
{PY} -m runner.search --out {disk}/run --resume > {work}/full_2.out 2> {work}/full_2.err
echo "SECOND $?"
{PY} -c "{check}" {disk}/run
"""
    start = time.perf_counter()
    _, out, err = _in_namespace(script, work)
    took = time.perf_counter() - start
    codes = dict(line.split() for line in out.splitlines() if line.startswith(("FIRST ", "SECOND ")))
    states = json.loads(next((line[7:] for line in out.splitlines() if line.startswith("STATES ")), "[]"))
    first_err = (work / "full_1.err").read_text() if (work / "full_1.err").exists() else err
    second_err = (work / "full_2.err").read_text() if (work / "full_2.err").exists() else ""
    ok = (codes.get("FIRST") == "2" and first_err.strip().count("\n") == 0 and "Traceback" not in first_err
          and codes.get("SECOND") == "0" and states.count("COMPLETE") == 8 and "RUNNING" not in states)
    _case(rows, *full_case, int(codes.get("FIRST", -1)), first_err,
          f"resume exit {codes.get('SECOND', '?')}, {states.count('COMPLETE')} COMPLETE of {len(states)}"
          + ("" if "Traceback" not in second_err else ", resume TRACEBACK"), took, ok)

    ro = work / "ro"
    ro.mkdir()
    script = f"""
mount --bind {ro} {ro} && mount -o remount,bind,ro {ro}
{PY} -m runner.export {probe_run} --formats pt2 --no-latency --out {ro}/export > /dev/null 2> {work}/ro_1.err
echo "EXPORT $?"
{PY} -m reports.build {probe_run} --out {ro}/report.html > /dev/null 2> {work}/ro_2.err
echo "REPORT $?"
"""
    start = time.perf_counter()
    _, out, err = _in_namespace(script, work)
    took = (time.perf_counter() - start) / 2
    codes = dict(line.split() for line in out.splitlines() if line.startswith(("EXPORT ", "REPORT ")))
    for (case, given, expected), key, log in zip(ro_cases, ("EXPORT", "REPORT"), ("ro_1.err", "ro_2.err"), strict=True):
        text = (work / log).read_text() if (work / log).exists() else err
        _case(rows, case, given, expected, int(codes.get(key, -1)), text,
              "nothing written" if not any(ro.iterdir()) else "WROTE THERE", took,
              codes.get(key) == "2" and text.strip().count("\n") == 0 and not any(ro.iterdir()))
    return rows


# ----------------------------------------------------------------------------------------------- the section

def body(soak_result: dict | None, loops: list[dict], cases: list[dict], command: str, drivers: dict | None = None,
         memory: dict | None = None) -> str:
    from _doc import markdown_table, stamp

    parts = [in_short(soak_result, loops, cases, drivers, memory), "", stamp(command), ""]
    if soak_result is not None:
        s = soak_result
        states = ", ".join(f"{v} {k}" for k, v in sorted(s["states"].items()))
        parts += ["### Memory over a long run", "",
                  markdown_table(["trials", "exit", "wall (min)", "RSS after trial 1 (MB)", "RSS at half-way (MB)",
                                  "RSS at the end (MB)", "growth per trial, 2nd half (MB)", "target (MB)"],
                                 [[f"{s['trials']} ({states})", s["status"], f"{s['wall_s'] / 60:.1f}",
                                   f"{s['rss_first']:.1f}", f"{s['rss_half']:.1f}", f"{s['rss_last']:.1f}",
                                   f"**{s['mb_per_trial']:.3f}**", f"<= {MEM_TARGET_MB:g}"]]),
                  "",
                  "One optuna-backend driver, probe_net trials (16 px, 64 images, 1 epoch); RSS read from "
                  "/proc/<pid>/status after each trial's line; growth = least-squares slope over the second half.", ""]
    if loops:
        rows = []
        for r in loops:
            rows.append([r.get("label", r["backend"]), f"{r['tree_max']} ({', '.join(r['tree_names'])})",
                         f"{r['cycles_survived']} / {r['cycles']}", r["final_status"],
                         f"{r['complete']} / {r['requested']}", r["running"], r["failed"],
                         ", ".join(map(str, r["twice"])) or "none", ", ".join(map(str, r["mismatched"])) or "none",
                         ", ".join(map(str, r["trained_not_told"])) or "none", "yes" if r["journal_ok"] else "NO",
                         (f"{r['lingering_cycles']} cycles, up to {r['lingering_max']} "
                          f"({', '.join(r['lingering_names'])})") if r["lingering_max"] else "none",
                         r["alive_after_end"], f"{r['wall_s'] / 60:.1f}"])
        parts += ["### kill -9 and --resume", "",
                  markdown_table(["backend", "processes of a driver, most seen", "kills survived", "final exit",
                                  "COMPLETE / asked", "RUNNING", "FAIL",
                                  "numbers completed twice", "folder ≠ journal", "trained, not recorded",
                                  "journal intact", "alive 10 s after a kill", "alive 10 s after the end",
                                  "wall (min)"], rows),
                  "",
                  "Each cycle starts `python -m runner.search` (first `--space`, then `--resume`) in its own process "
                  "group, waits for one more COMPLETE trial and SIGKILLs the group (\"driver pid only\": the driver's "
                  "pid alone, as the OOM killer or `kill -9 PID` would); a last `--resume` runs to the end. "
                  "Trials sleep 0.1 s per step so a kill lands mid-trial; FAIL rows are those trials, marked "
                  "interrupted and replaced. \"Alive 10 s after a kill\": processes descended from the killed driver "
                  "(recorded while it ran) or naming the run directory, still running 10 s later; the benchmark then "
                  "killed them by pid. \"Trained, not recorded\": a non-COMPLETE trial whose folder has metrics.json "
                  "(finished training, killed before the journal recorded it).", ""]
    if drivers is not None:
        parts += ["### Two drivers on one run folder", "",
                  markdown_table(["round", "exit codes", "the refused driver's one line", "COMPLETE / asked",
                                  "numbers completed twice", "trial folders", "wall (s)", "as expected"],
                                 [[r["round"], " and ".join(map(str, r["codes"])), f"`{r['line'][:150]}`",
                                   f"{r['complete']} / {drivers['trials']}", r["twice"], r["folders"],
                                   f"{r['wall_s']:.1f}", "yes" if r["ok"] else "**NO**"] for r in drivers["rounds"]]),
                  "",
                  "Each round starts two `python -m runner.search --space twins.yaml --out <new folder>` (optuna "
                  f"backend, probe_net, {drivers['trials']} one-epoch trials, 0.05 s per step) at the same moment. "
                  "Expected: one exits 0, the other exits 2 with one line naming the live driver's pid, and the "
                  "journal ends with exactly the requested COMPLETE trials, none twice, one folder each, and no "
                  "driver.lock left.", ""]
    if memory is not None:
        m = memory
        parts += ["### Predict over huge frames", "",
                  markdown_table(["images", "file sizes (KB)", "exit", "classified", "peak RSS (MB)",
                                  "peak RSS, one 24 px image (MB)", "target (MB)", "wall (s)"],
                                 [[f"{m['images']} PNGs of {m['side']} x {m['side']} RGB",
                                   ", ".join(map(str, m["file_kb"])), m["status"], m["classified"],
                                   f"**{m['peak_mb']:.0f}**", f"{m['floor_mb']:.0f}", f"< {PREDICT_MB_TARGET}",
                                   f"{m['seconds']:.1f}"]]),
                  "",
                  "`python -m runner.predict EXPORT folder/ --format pt2`; peak RSS is `ru_maxrss` of that process, "
                  "read by a small launcher that runs it as its own child (a child of the benchmark itself would "
                  "inherit the benchmark's high-water mark through exec). Each frame is 10^8 pixels (Pillow decodes "
                  "RGB at 4 bytes a pixel: 400 MB), reduced "
                  "while decoding and resized before the next is read; the second figure is the same command on one "
                  "small image (Python, torch and the model alone).", ""]
    if cases:
        parts += ["### Hostile and careless input", "",
                  markdown_table(["case", "given", "expected", "exit", "first line of stderr", "written", "time (s)",
                                  "as expected"],
                                 [[c["case"], c["given"], c["expected"], c["status"], f"`{c['stderr']}`" if c["stderr"]
                                   else "", c["wrote"], f"{c['seconds']:.1f}", "yes" if c["ok"] else "**NO**"]
                                  for c in cases]),
                  "",
                  "Times are whole command lines, Python and torch start-up included (about 3 s here); the oversized "
                  "files' own parse time is in the \"written\" column. The cases from \".pt2 with a repeated entry "
                  "name\" on are the third round's findings; the full disk and the read-only folder are real mounts "
                  "(a 160 KB tmpfs, a read-only bind mount) in a private mount namespace (`unshare -rm`).", ""]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-trials", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=10, help="kill -9 cycles per backend")
    parser.add_argument("--backends", nargs="+", default=["optuna", "ray"], choices=["optuna", "ray"])
    parser.add_argument("--pid-cycles", type=int, default=3, help="extra ray cycles that SIGKILL the driver's pid alone "
                        "(not its group), as the OOM killer would; 0: none")
    parser.add_argument("--skip", nargs="*", default=[], choices=["soak", "kill", "hostile", "drivers", "memory"])
    parser.add_argument("--driver-rounds", type=int, default=DRIVER_ROUNDS, help="rounds of two drivers on one run")
    parser.add_argument("--out", type=Path, help="write the section to this file instead of docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    command = "python benchmarks/bench_reliability.py" + "".join(f" {a}" for a in sys.argv[1:])
    soak_result, loops, cases, drivers, memory = None, [], [], None, None
    with tempfile.TemporaryDirectory(prefix="cellsparse-rel-") as tmp:
        work = Path(tmp)
        if "soak" not in args.skip:
            soak_result = soak(work, args.soak_trials)
            print(json.dumps({k: v for k, v in soak_result.items() if k != "samples"}), flush=True)
        if "kill" not in args.skip:
            for backend in args.backends:
                loops.append(kill_loop(work, backend, args.cycles))
                print(json.dumps(loops[-1]), flush=True)
            if "ray" in args.backends and args.pid_cycles:
                loops.append(kill_loop(work, "ray", args.pid_cycles, group=False))
                print(json.dumps(loops[-1]), flush=True)
        if "hostile" not in args.skip:
            cases = hostile(work)
        if "drivers" not in args.skip:
            drivers = two_drivers(work, args.driver_rounds)
        if "memory" not in args.skip:
            memory = predict_memory(work, _memory_export(work))
    text = body(soak_result, loops, cases, command, drivers, memory)
    print(text)
    title = "Reliability: kills, resumes, memory, hostile input"
    if args.out:
        args.out.write_text(f"## {title}\n\n{text}")
    else:
        from _doc import write_section

        write_section("reliability", title, text)
        print("written to docs/benchmarks.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
