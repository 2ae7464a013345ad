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
   its exit status, first line of stderr, what it wrote and its time are tabled beside what is expected.
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


def in_short(soak: dict | None, loops: list[dict], cases: list[dict]) -> str:
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
    text = "; ".join(parts)
    text = text[:1].upper() + text[1:] + "." if text else ""
    if cases:
        bad = [c["case"] for c in cases if not c["ok"]]
        tail = (f"All {len(cases)} hostile or careless inputs got the expected outcome." if not bad else
                f"{len(cases) - len(bad)} of {len(cases)} hostile or careless inputs got the expected outcome; "
                f"not: {', '.join(bad)}.")
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
    from search_space.errors import UserError
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
    return rows


# ----------------------------------------------------------------------------------------------- the section

def body(soak_result: dict | None, loops: list[dict], cases: list[dict], command: str) -> str:
    from _doc import markdown_table, stamp

    parts = [in_short(soak_result, loops, cases), "", stamp(command), ""]
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
    if cases:
        parts += ["### Hostile and careless input", "",
                  markdown_table(["case", "given", "expected", "exit", "first line of stderr", "written", "time (s)",
                                  "as expected"],
                                 [[c["case"], c["given"], c["expected"], c["status"], f"`{c['stderr']}`" if c["stderr"]
                                   else "", c["wrote"], f"{c['seconds']:.1f}", "yes" if c["ok"] else "**NO**"]
                                  for c in cases]),
                  "",
                  "Times are whole command lines, Python and torch start-up included (about 3 s here); the oversized "
                  "files' own parse time is in the \"written\" column.", ""]
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--soak-trials", type=int, default=200)
    parser.add_argument("--cycles", type=int, default=10, help="kill -9 cycles per backend")
    parser.add_argument("--backends", nargs="+", default=["optuna", "ray"], choices=["optuna", "ray"])
    parser.add_argument("--pid-cycles", type=int, default=3, help="extra ray cycles that SIGKILL the driver's pid alone "
                        "(not its group), as the OOM killer would; 0: none")
    parser.add_argument("--skip", nargs="*", default=[], choices=["soak", "kill", "hostile"])
    parser.add_argument("--out", type=Path, help="write the section to this file instead of docs/benchmarks.md")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    command = "python benchmarks/bench_reliability.py" + "".join(f" {a}" for a in sys.argv[1:])
    soak_result, loops, cases = None, [], []
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
    text = body(soak_result, loops, cases, command)
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
