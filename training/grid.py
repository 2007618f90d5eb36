"""Grids of runs: the paper's tables (``training/grids/*.toml``) and your own, expanded into cells.

A grid is an entry script, fixed flags, axes to sweep, methods and seeds; a cell is one run of it, an ordinary
run folder ``<sweep_dir>/<cell name>``. The grid file also holds the paper's number of each (method, setting).
The state of a cell is read from its run folder's files, so it is the same for the sweep, the report and any
run started by hand.

    title = "CIFAR-10, instance-dependent noise"
    script = "instanceGM.py"            # entry script, relative to the repository root
    methods = ["instancegm", "dividemix"]  # also "instancegm+noise_rate": --method instancegm --selection noise_rate
    seeds = [1, 2, 3]
    compare = "best"                    # which accuracy the paper's number is compared with
    [flags]                             # fixed flags: --dataset cifar10
    dataset = "cifar10"
    [axes]                              # swept flags: one cell per combination
    r = [0.2, 0.5]
    [paper.instancegm]                  # paper numbers per setting ("r=0.2"); a plain number without axes
    "r=0.2" = 96.68
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

from training.config import ALIASES, COMPAT_FLAGS, METHODS, SELECTIONS, Config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
GRIDS_DIR = Path(__file__).resolve().parent / "grids"
# Accuracies a run's summary.json gives; "compare" picks the one set against the paper's number.
ACCURACIES = ("last", "best", "mean_last10", "at_best_val")

Value = Union[str, int, float, bool]
# A row of a grid is an engine method, optionally with a non-default sample selection after a "+".
ROWS = METHODS + tuple(f"{m}+{s}" for m in METHODS if m != "ce" for s in SELECTIONS if s != "gmm")


def split_row(row: str) -> tuple[str, str]:
    """``"instancegm+noise_rate"`` -> ``("instancegm", "noise_rate")``; a plain method -> ``(method, "gmm")``."""
    method, _, selection = row.partition("+")
    return method, selection or "gmm"


class GridError(ValueError):
    """A grid that cannot be used; the message says what to change."""


# Values reach a shell script (Slurm) and folder names: keys are identifiers, no value holds a control
# character (a newline would end an ``#SBATCH`` line), and a cell name keeps only these characters.
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_IN_NAME = re.compile(r"[^A-Za-z0-9._+-]")
_GRID_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
# Flags the sweep writes itself for every cell.
SWEEP_FLAGS = ("method", "seed", "output_dir", "run_name", "resume")


def script_options() -> set[str]:
    """Every ``--KEY`` the entry scripts take (they share one Config), without the leading dashes."""
    names = {f.name for f in Config.__dataclass_fields__.values()}
    return names | set(ALIASES) | set(COMPAT_FLAGS)


def check_key(key: str, where: str) -> str:
    """``key`` as a flag name a grid may set: an identifier, an option of the scripts, not one the sweep sets."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise GridError(f"{where} key {key!r}: flag names are letters, digits and _ (e.g. lambda_u)")
    if key in SWEEP_FLAGS:
        raise GridError(f"{where} key {key!r}: the sweep sets --{key} itself (methods and seeds: --methods, --seeds)")
    if key not in script_options():
        raise GridError(f"{where} key {key!r}: not an option of the entry scripts (python instanceGM.py --help)")
    return key


def check_value(value: Any, where: str) -> Value:
    """A scalar flag value (string, integer, float or boolean) without control characters."""
    if not isinstance(value, (str, int, float, bool)):
        raise GridError(f"{where}: {value!r} is a {type(value).__name__}; write a string, number or true/false")
    if isinstance(value, str) and (_CONTROL.search(value) or not value):
        raise GridError(f"{where}: {value!r} is empty or holds a control character (newline, tab, ...)")
    return value


def format_value(value: Value) -> str:
    """The text a flag value is passed as: a string as written (``--set`` values keep their spelling:
    ``007``, ``1_000``, ``0.0123456789``), a float by ``repr`` (no digit lost), booleans as true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_value(text: str) -> Value:
    """A command-line value as TOML would have typed it: int, float, boolean or string (to compare settings;
    the value passed to the run keeps its own spelling)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def setting_label(setting: Mapping[str, Value]) -> str:
    """``r=0.2`` (axes in grid order, comma-separated); "" for a grid without axes."""
    return ",".join(f"{k}={format_value(v)}" for k, v in setting.items())


def canonical_label(label: str) -> str:
    """A setting label with each value in one spelling (``r=0.50`` -> ``r=0.5``), to find the paper's number."""
    if not label:
        return ""
    pairs = [part.split("=", 1) for part in label.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise GridError(f'paper key {label!r}: write settings as axis=value, e.g. "r=0.2"')
    return ",".join(f"{k.strip()}={format_value(parse_value(v.strip()))}" for k, v in pairs)


@dataclass(frozen=True)
class Cell:
    """One run of a grid: what to run, where its folder is, and what the paper reports for it."""

    grid: str
    script: str
    flags: tuple[tuple[str, Value], ...]  # fixed flags and this cell's axis values, in order
    setting: str  # the axis values as a label, "r=0.2"
    method: str
    seed: int
    paper: float | None

    @property
    def name(self) -> str:
        """Run folder name: ``r0.2_instancegm_seed1`` (``instancegm_seed1`` without axes)."""
        parts = [s.replace("=", "", 1) for s in self.setting.split(",") if s]
        name = "_".join([*parts, self.method.replace("+", "_"), f"seed{self.seed}"]).replace("/", "-")
        return _UNSAFE_IN_NAME.sub("-", name)

    def argv(self, sweep_dir: Path, torchrun: bool = False) -> list[str]:
        """The entry script's flags; every cell resumes its own folder if it holds a checkpoint."""
        out: list[str] = []
        for key, value in self.flags:
            # torchrun's own parser takes --r for one of its --rdzv* options: use the alias there.
            flag = "noise_rate" if torchrun and key == "r" else key
            out += [f"--{flag}", format_value(value)]
        method, selection = split_row(self.method)
        if selection != "gmm":  # after the grid's flags: the row's selection is the one that counts
            out += ["--selection", selection]
        return out + [
            "--method", method, "--seed", str(self.seed),
            "--output_dir", str(sweep_dir), "--run_name", self.name, "--resume", "auto",
        ]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "grid": self.grid,
            "script": self.script,
            "flags": [list(kv) for kv in self.flags],
            "setting": self.setting,
            "method": self.method,
            "seed": self.seed,
            "paper": self.paper,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cell:
        return cls(
            grid=data["grid"],
            script=data["script"],
            flags=tuple((k, v) for k, v in data["flags"]),
            setting=data["setting"],
            method=data["method"],
            seed=int(data["seed"]),
            paper=data.get("paper"),
        )


@dataclass(frozen=True)
class Grid:
    name: str
    script: str
    title: str = ""
    flags: dict[str, Value] = field(default_factory=dict)
    axes: dict[str, list[Value]] = field(default_factory=dict)
    methods: tuple[str, ...] = ("instancegm",)
    seeds: tuple[int, ...] = (1,)
    compare: str = "best"  # which accuracy the paper number is set against
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> setting label -> accuracy %
    paper_note: str = ""

    def cells(self) -> list[Cell]:
        """The product of axes x methods x seeds, settings outermost (the order of the paper's table)."""
        keys = list(self.axes)
        out: list[Cell] = []
        seen: dict[str, Cell] = {}
        for values in itertools.product(*(self.axes[k] for k in keys)):
            setting = dict(zip(keys, values))
            label = setting_label(setting)
            flags = tuple({**self.flags, **setting}.items())
            for method in self.methods:
                for seed in self.seeds:
                    paper = self.paper.get(method, {}).get(canonical_label(label))
                    cell = Cell(self.name, self.script, flags, label, method, seed, paper)
                    other = seen.setdefault(cell.name, cell)
                    if other is not cell:
                        raise GridError(
                            f"settings {other.setting!r} and {cell.setting!r} would share the run folder "
                            f"{cell.name!r}: give the values distinct spellings"
                        )
                    out.append(cell)
        return out

    def with_overrides(
        self,
        sets: Sequence[str] = (),
        seeds: Sequence[int] | None = None,
        methods: Sequence[str] | None = None,
    ) -> Grid:
        """``--set key=v1,v2`` makes ``key`` an axis; one value sets a fixed flag, or narrows an axis of the grid
        (``--set r=0.5`` on a grid over r keeps r in the cell names and the paper's numbers).
        ``--seeds`` and ``--methods`` replace the grid's."""
        flags, axes = dict(self.flags), dict(self.axes)
        for item in sets:
            key, sep, values = item.partition("=")
            key = key.strip().lstrip("-")
            if not sep or not key or not values:
                raise GridError(f"--set {item!r}: write KEY=VALUE or KEY=V1,V2,... (e.g. --set r=0.2,0.4)")
            if key in ("method", "seed"):
                raise GridError("set methods and seeds with --methods and --seeds, not --set")
            check_key(key, "--set")
            # Values travel as written: the run parses them, not the sweep (0.0123456789, 007, 1_000 stay).
            parsed: list[Value] = [check_value(v.strip(), f"--set {key}") for v in values.split(",")]
            flags.pop(key, None)
            was_axis = axes.pop(key, None) is not None
            if len(parsed) == 1 and not was_axis:
                flags[key] = parsed[0]
            else:
                axes[key] = parsed
        if "method" in flags or "method" in axes or "seed" in flags or "seed" in axes:
            raise GridError("set methods and seeds with --methods and --seeds, not --set")
        return replace(
            self,
            flags=flags,
            axes=axes,
            seeds=_check_seeds(seeds, "--seeds") if seeds else self.seeds,
            methods=_check_methods(methods) if methods else self.methods,
        )


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)):
        raise GridError(f'methods = {methods!r}: write a list, e.g. methods = ["instancegm", "dividemix"]')
    unknown = [m for m in methods if m not in ROWS]
    if unknown or not methods:
        raise GridError(f"methods {', '.join(unknown) or '(none)'}: choose from {', '.join(ROWS)}")
    return tuple(methods)


def _check_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    if not isinstance(seeds, (list, tuple)) or not seeds:
        raise GridError(f"{where} = {seeds!r}: write a non-empty list of integers, e.g. seeds = [1, 2, 3]")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
    if bad:
        raise GridError(f"{where}: {bad[0]!r} is not an integer seed; write whole numbers, e.g. seeds = [1, 2, 3]")
    return tuple(seeds)


def _check_str(data: Mapping[str, Any], key: str, default: str) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or _CONTROL.search(value.replace("\n", "")):
        raise GridError(f"grid key {key!r}: {value!r} is not a string of one line")
    return value


def _check_table(data: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        raise GridError(f"grid key {key!r}: {value!r} is not a table; write [{key}] followed by key = value lines")
    return dict(value)


def named_grids() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.toml"))


def load_grid(spec: str) -> Grid:
    """A grid by name (``cifar100_idn``: ``training/grids/cifar100_idn.toml``) or from a TOML file path."""
    path = Path(spec)
    if path.suffix != ".toml":
        path = GRIDS_DIR / f"{spec}.toml"
    if not path.exists():
        raise GridError(f"grid {spec!r}: not a TOML file nor one of the named grids ({', '.join(named_grids())})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise GridError(f"{path}: {err}") from None
    return grid_from_dict(data, default_name=path.stem)


def grid_from_dict(data: Mapping[str, Any], default_name: str = "grid") -> Grid:
    known = {"name", "title", "script", "flags", "axes", "methods", "seeds", "compare", "paper", "paper_note"}
    unknown = set(data) - known
    if unknown:
        raise GridError(f"unknown grid key(s) {', '.join(sorted(unknown))}: use {', '.join(sorted(known))}")
    if "script" not in data:
        raise GridError('a grid needs script = "instanceGM.py" (the entry script of its runs)')
    script = _check_str(data, "script", "")
    if not (ROOT / script).is_file():
        raise GridError(f"script {script!r}: no such entry script in {ROOT}")
    compare = _check_str(data, "compare", "best")
    if compare not in ACCURACIES:
        raise GridError(f"compare = {compare!r}: choose one of {', '.join(ACCURACIES)}")
    name = _check_str(data, "name", _UNSAFE_IN_NAME.sub("-", default_name))
    if not _GRID_NAME.match(name):
        raise GridError(f"grid name {name!r}: use letters, digits, '.', '_' and '-' (it names folders and jobs)")
    flags = {check_key(k, "[flags]"): check_value(v, f"[flags] {k}") for k, v in _check_table(data, "flags").items()}
    axes: dict[str, list[Value]] = {}
    for key, values in _check_table(data, "axes").items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise GridError(f"[axes] {key} = []: an axis needs at least one value (or remove it)")
        axes[check_key(key, "[axes]")] = [check_value(v, f"[axes] {key}") for v in values]
    paper: dict[str, dict[str, float]] = {}
    for method, values in _check_table(data, "paper").items():
        if isinstance(values, (int, float)) and not isinstance(values, bool):
            values = {"": values}
        if not isinstance(values, Mapping) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values.values()
        ):
            raise GridError(f'[paper.{method}]: write "setting" = accuracy lines, e.g. "r=0.2" = 96.68')
        paper[method] = {canonical_label(k): float(v) for k, v in values.items()}
    return Grid(
        name=name,
        script=script,
        title=_check_str(data, "title", ""),
        flags=flags,
        axes=axes,
        methods=_check_methods(data.get("methods", ["instancegm"])),
        seeds=_check_seeds(data.get("seeds", [1]), "seeds"),
        compare=compare,
        paper=paper,
        paper_note=_check_str(data, "paper_note", ""),
    )


def grid_to_dict(grid: Grid) -> dict[str, Any]:
    return {
        "name": grid.name,
        "title": grid.title,
        "script": grid.script,
        "flags": grid.flags,
        "axes": grid.axes,
        "methods": list(grid.methods),
        "seeds": list(grid.seeds),
        "compare": grid.compare,
        "paper": grid.paper,
        "paper_note": grid.paper_note,
    }


# ================================================================ state of a run folder ========================
def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_finished(run_dir: Path) -> bool:
    """summary.json written after all of the run's --num_epochs epochs (a summary of fewer is not finished)."""
    summary, info = read_json(run_dir / "summary.json"), read_json(run_dir / "config.json")
    if not summary or not info:
        return False
    acc, cfg = summary.get("test/acc"), info.get("config")
    epochs = acc.get("epochs") if isinstance(acc, dict) else None
    num_epochs = cfg.get("num_epochs", 0) if isinstance(cfg, dict) else 0
    return isinstance(epochs, int) and isinstance(num_epochs, int) and epochs >= num_epochs


def cell_state(run_dir: Path) -> str:
    """finished | partial (a checkpoint, not all epochs) | pending (nothing yet)."""
    if is_finished(run_dir):
        return "finished"
    if (run_dir / "checkpoint.pt").exists() or (run_dir / "metrics.jsonl").exists():
        return "partial"
    return "pending"


# ================================================================ sweep manifest ==============================
MANIFEST = "sweep.json"


def write_manifest(sweep_dir: Path, grid: Grid, cells: Sequence[Cell]) -> None:
    """``sweep.json``: the grid and every cell ever asked for in this folder (a later, larger sweep adds cells)."""
    old = read_json(sweep_dir / MANIFEST) or {}
    merged = {c["name"]: c for c in old.get("cells", [])}
    merged.update({c.name: c.to_dict() for c in cells})
    sweep_dir.mkdir(parents=True, exist_ok=True)
    tmp = sweep_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"grid": grid_to_dict(grid), "cells": list(merged.values())}, indent=2))
    tmp.replace(sweep_dir / MANIFEST)


def read_manifest(sweep_dir: Path) -> tuple[Grid, list[Cell]] | None:
    data = read_json(sweep_dir / MANIFEST)
    if data is None:
        return None
    return grid_from_dict(data["grid"]), [Cell.from_dict(c) for c in data["cells"]]


# ================================================================ who is running a cell =======================
RUN_LOCK = "run.lock"  # the run folder's lock (training.rundir.RunLock): pid and host of the writing process


def lock_owner(run_dir: Path) -> str | None:
    """``"process N on HOST"`` when a live process (or one on another host) holds ``run_dir``'s lock, else None.

    Read here, not through training.rundir, so that the sweep and the report start without torch."""
    owner = read_json(Path(run_dir) / RUN_LOCK)
    if not isinstance(owner, dict) or not isinstance(owner.get("pid"), int):
        return None
    pid, host = owner["pid"], owner.get("host")
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # another user's process: it exists
            pass
    return f"process {pid} on {host}"
