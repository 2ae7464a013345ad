"""Print every strategy's parameters as Markdown tables; ``--readme FILE`` refreshes them in place.

The tables come from the strategies' own declarations, so the README cannot drift from the code:
``python -m search_space.describe --readme README.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from search_space.k_rules import K_RULE_DEFAULTS, K_RULE_PARAMS
from search_space.resolution import INPUT_PARAMS, OptionalParamSpec
from search_space.strategies import ParamSpec, get_strategy, strategy_names

MARKER = "<!-- strategy-params -->"
END_MARKER = "<!-- /strategy-params -->"


def _accepts(spec: ParamSpec) -> str:
    if spec.kind == "choice":
        return " \\| ".join(f"`{c}`" for c in spec.choices)
    if spec.kind == "bool":
        return "`true` \\| `false`"
    text = f"{spec.kind}{spec.bounds_text()}"
    return f"{text} \\| `null`" if isinstance(spec, OptionalParamSpec) else text


def _table(params: dict[str, ParamSpec], defaults: dict) -> list[str]:
    lines = ["| key | accepts | default | meaning |", "| --- | --- | --- | --- |"]
    for key, spec in params.items():
        lines.append(f"| `{key}` | {_accepts(spec)} | `{json.dumps(defaults[key])}` | {spec.doc} |")
    return lines


def strategy_tables() -> str:
    """Markdown: one table per registered strategy, then the k-rule keys, then the keys every strategy takes."""
    out: list[str] = []
    for name in strategy_names():
        info = get_strategy(name)
        out += [f"**`{name}`**: {info.doc}", ""] + _table(info.params, info.defaults) + [""]
    out += ["**k-rule keys** (for strategies with a k):", ""] + _table(K_RULE_PARAMS, K_RULE_DEFAULTS) + [""]
    defaults = {key: spec.default for key, spec in INPUT_PARAMS.items()}
    out += ["**keys every strategy takes** (in `space.shared` or a strategy's block):", ""] + _table(INPUT_PARAMS, defaults)
    return "\n".join(out)


def refresh_readme(path: Path) -> None:
    text = path.read_text()
    if MARKER not in text:
        raise SystemExit(f"error: {path}: no {MARKER} marker to write the tables after")
    head, rest = text.split(MARKER, 1)
    tail = rest.split(END_MARKER, 1)[1] if END_MARKER in rest else rest
    path.write_text(f"{head}{MARKER}\n{strategy_tables()}\n{END_MARKER}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search_space.describe", description=__doc__)
    parser.add_argument("--readme", type=Path, help="refresh the tables between the markers in this file")
    args = parser.parse_args(argv)
    if args.readme:
        refresh_readme(args.readme)
    else:
        sys.stdout.write(strategy_tables() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
