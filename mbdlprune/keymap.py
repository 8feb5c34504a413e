"""Key maps: rename a foreign checkpoint's tensors to a built-in architecture's names before strict loading.

A key map is a small TOML file (or the name of one shipped in ``mbdlprune/keymaps/``)::

    [key_map]
    description = "what layout this maps from and to"
    arch = "deq-edsr"                      # optional: the architecture the names are for
    drop = ['^du_block\\.mu$']             # regexes of keys to drop
    rename = [['^du_block\\.nn\\.', 'prior.']]   # ordered [pattern, replacement] pairs

Drops are applied first, then every rename rule in order (``re.sub`` on each key). The map
is strict: unknown keys, bad regexes and two keys renamed to one name are errors. What it
did (rules, counts, its sha256) is recorded in the output's metadata.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .config import check_keys, expect
from .errors import ConfigError

PACKAGE_DIR = "keymaps"
MAX_RULES = 256


def list_key_maps() -> list[str]:
    """Names of the key maps shipped with mbdlprune."""
    folder = resources.files("mbdlprune").joinpath(PACKAGE_DIR)
    return sorted(p.name[: -len(".toml")] for p in folder.iterdir() if p.name.endswith(".toml"))


@dataclass
class KeyMap:
    """Ordered rename rules and drop patterns for a checkpoint's tensor names."""

    name: str
    rename: list[tuple[str, str]] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    arch: str | None = None
    description: str = ""
    sha256: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], name: str, sha256: str = "") -> "KeyMap":
        where = f"key map {name}"
        check_keys(data, ["key_map"], where, required=["key_map"])
        t = data["key_map"]
        if not isinstance(t, Mapping):
            raise ConfigError(f"{where}: [key_map] must be a table", "write [key_map] with rename and drop")
        check_keys(t, ["description", "arch", "drop", "rename"], f"{where} [key_map]")
        drop = list(expect(t.get("drop", []), list, "drop", where))
        rename = list(expect(t.get("rename", []), list, "rename", where))
        if len(drop) + len(rename) > MAX_RULES:
            raise ConfigError(f"{where} has {len(drop) + len(rename)} rules", f"use at most {MAX_RULES}")
        for p in drop:
            _compile(expect(p, str, "drop pattern", where), where)
        rules = []
        for r in rename:
            if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)):
                raise ConfigError(f"{where}: each rename rule must be [pattern, replacement], got {r!r}",
                                  "write e.g. ['^net\\\\.', 'prior.']")
            _check_replacement(_compile(r[0], where), r[1], where)
            rules.append((r[0], r[1]))
        arch = expect(t["arch"], str, "arch", where) if "arch" in t else None
        desc = expect(t.get("description", ""), str, "description", where)
        return cls(name, rules, drop, arch, desc, sha256)

    def apply(self, state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return the renamed state and a record of what each rule did."""
        drops = [re.compile(p) for p in self.drop]
        renames = [(re.compile(p), r) for p, r in self.rename]
        drop_hits = [0] * len(drops)
        rename_hits = [0] * len(renames)
        out: dict[str, Any] = {}
        origin: dict[str, str] = {}
        for key, value in state.items():
            hit = next((i for i, rx in enumerate(drops) if rx.search(key)), None)
            if hit is not None:
                drop_hits[hit] += 1
                continue
            new = key
            for i, (rx, repl) in enumerate(renames):
                changed = rx.sub(repl, new)
                if changed != new:
                    rename_hits[i] += 1
                    new = changed
            if new in out:
                raise ConfigError(f"key map {self.name}: {origin[new]!r} and {key!r} both become {new!r}",
                                  "make the rename rules map different keys to different names")
            out[new] = value
            origin[new] = key
        record = {"name": self.name, "sha256": self.sha256, "arch": self.arch,
                  "drop": [{"pattern": p, "matched": n} for p, n in zip(self.drop, drop_hits)],
                  "rename": [{"pattern": p, "replace": r, "matched": n} for (p, r), n in zip(self.rename, rename_hits)],
                  "dropped": sum(drop_hits), "renamed": sum(1 for k in out if origin[k] != k)}
        return out, record


def _check_replacement(rx: re.Pattern, repl: str, where: str) -> None:
    """Refuse group references the pattern does not have (re only checks them on a match)."""
    for num, name in re.findall(r"\\(\d+)|\\g<([^>]*)>", repl):
        ref = num or name
        ok = (ref.isdigit() and int(ref) <= rx.groups) or (not ref.isdigit() and ref in rx.groupindex)
        if not ok:
            raise ConfigError(f"{where}: replacement {repl!r} refers to group {ref!r}, which {rx.pattern!r} does not have",
                              "refer only to groups the pattern has")


def _compile(pattern: str, where: str) -> re.Pattern:
    if len(pattern) > 1000:
        raise ConfigError(f"{where}: a pattern is {len(pattern)} characters long", "keep patterns under 1000 characters")
    try:
        rx = re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as e:
        raise ConfigError(f"{where}: bad regex {pattern!r} ({e})", "fix the pattern") from None
    if _may_backtrack_exponentially(pattern):
        raise ConfigError(f"{where}: the regex {pattern!r} repeats a part that can itself repeat or branch, "
                          "which can take exponential time on some keys",
                          "write the pattern without nested repetition, e.g. '^a+$' instead of '^(a+)+$'")
    return rx


def _may_backtrack_exponentially(pattern: str) -> bool:
    """True when an unbounded repetition holds another repetition or an alternation (e.g. ``(a+)+``, ``(a|aa)*``).

    Python's regex engine backtracks; such patterns can take exponential time on a crafted
    key, and a key map must never hang a command. Reads the pattern's parse tree.
    """
    try:
        from re import _parser as parser  # Python >= 3.11
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as parser  # type: ignore[no-redef]

    repeats = {"MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"}

    def walk(items, inside: bool) -> bool:
        for op, av in items:
            name = str(op)
            if name in repeats:
                lo, hi, sub = av
                unbounded = hi is parser.MAXREPEAT or hi > 16
                if inside and (unbounded or hi > 1):
                    return True
                if walk(sub, inside or unbounded):
                    return True
            elif name == "SUBPATTERN":
                if walk(av[-1], inside):
                    return True
            elif name == "BRANCH":
                if inside:
                    return True
                if any(walk(b, inside) for b in av[1]):
                    return True
            elif name in ("ASSERT", "ASSERT_NOT"):
                if walk(av[1], inside):
                    return True
            elif name == "GROUPREF_EXISTS":
                if any(b is not None and walk(b, inside) for b in av[1:]):
                    return True
        return False

    try:
        return walk(parser.parse(pattern), False)
    except Exception:  # the pattern compiled above; a parse-tree surprise is treated as unsafe
        return True


def load_key_map(spec: str | Path | KeyMap | None) -> KeyMap | None:
    """A key map from a shipped name (``mbdl-pruning``), a TOML file path, or a KeyMap."""
    import tomllib

    if spec is None or isinstance(spec, KeyMap):
        return spec
    text_spec = str(spec)
    if text_spec in list_key_maps():
        res = resources.files("mbdlprune").joinpath(PACKAGE_DIR, f"{text_spec}.toml")
        raw, name = res.read_bytes(), text_spec
    else:
        p = Path(text_spec)
        if not p.is_file():
            raise ConfigError(f"--key-map {text_spec!r} is neither a shipped key map nor a file",
                              f"use one of: {', '.join(list_key_maps())}, or a TOML file")
        raw, name = p.read_bytes(), p.name
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError) as e:
        raise ConfigError(f"key map {name} is not valid TOML ({e})", "fix the file's syntax") from None
    return KeyMap.from_dict(data, name, hashlib.sha256(raw).hexdigest())
