"""engine/codes.py declares exactly the codes lua/resv.lua emits.

The Lua is read as text. A code reaches a reply or an event in one of two
ways: as a string literal right after a 'type', 'decision', 'code' or
'reason' key in a table constructor (`'reason', 'SOLD_OUT'`, or a value
picked by `cond and 'A' or 'B'`), or as an argument of a local helper that
puts one of its parameters there (`rejected('RESOURCE_CLOSED',
'STATE_CLOSED', true)`). Both are collected; the self-tests below show the
collector sees a code added either way.
"""

from __future__ import annotations

import re

import pytest

from resv.engine import codes
from resv.engine.library import library_source

POSITIONS = ("type", "decision", "code", "reason")
DECLARED = {
    "type": {m.value for m in codes.EventType},
    "decision": {m.value for m in codes.Outcome},
    "code": {m.value for m in codes.PublicCode},
    "reason": {m.value for m in codes.Reason},
}
CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_LITERAL = re.compile(r"'((?:[^'\\]|\\.)*)'")
_FUNCTION = re.compile(r"local function (\w+)\(([^)]*)\)")


def _strip_comments(source: str) -> str:
    source = re.sub(r"--\[\[.*?\]\]", "", source, flags=re.DOTALL)
    return re.sub(r"--[^\n]*", "", source)


def _expression(text: str, start: int) -> str:
    """The expression starting at `start`, up to the comma, closing brace or
    parenthesis that ends it at its own nesting depth."""
    depth, i = 0, start
    while i < len(text):
        ch = text[i]
        if ch == "'":
            i = _LITERAL.match(text, i).end()
            continue
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            break
        i += 1
    return text[start:i]


def _values(expression: str) -> list[str]:
    """The literals an expression can evaluate to: those at its own depth,
    not operands of a comparison (`e.status == 'LEFT' and 'A' or 'B'` -> A, B;
    `field('decision')` -> nothing)."""
    out, depth, i = [], 0, 0
    while i < len(expression):
        ch = expression[i]
        if ch == "'":
            m = _LITERAL.match(expression, i)
            before = expression[:i].rstrip()
            after = expression[m.end():].lstrip()
            compared = before.endswith(("==", "~=")) or after.startswith(("==", "~="))
            if depth == 0 and not compared:
                out.append(m.group(1))
            i = m.end()
            continue
        depth += ch in "({["
        depth -= ch in ")}]"
        i += 1
    return out


def _arguments(text: str, open_paren: int) -> list[str]:
    args, i = [], open_paren + 1
    while True:
        arg = _expression(text, i)
        args.append(arg.strip())
        i += len(arg)
        if i >= len(text) or text[i] != ",":
            return args
        i += 1


def emitted(source: str) -> dict[str, set[str]]:
    """Every code the Lua source can emit, by position."""
    text = _strip_comments(source)
    found: dict[str, set[str]] = {p: set() for p in POSITIONS}
    # helpers that pass a parameter into a position: name -> {index: position}
    helpers: dict[str, dict[int, str]] = {}
    functions = [(m.start(), m.group(1), [p.strip() for p in m.group(2).split(",")])
                 for m in _FUNCTION.finditer(text)]
    for m in re.finditer(r"'(type|decision|code|reason)'\s*,\s*", text):
        value = _expression(text, m.end())
        found[m.group(1)].update(_values(value))
        name = value.strip()
        if re.fullmatch(r"\w+", name):  # a variable: which helper's parameter is it?
            for _, fn, params in sorted((f for f in functions if f[0] < m.start()), reverse=True):
                if name in params:
                    helpers.setdefault(fn, {})[params.index(name)] = m.group(1)
                    break
    for fn, slots in helpers.items():
        for call in re.finditer(rf"(?<![\w.]){fn}\(", text):
            if text[:call.start()].rstrip().endswith("function"):
                continue  # the definition
            args = _arguments(text, call.end() - 1)
            for index, position in slots.items():
                if index < len(args):
                    found[position].update(_values(args[index]))
    return {p: {v for v in values if v} for p, values in found.items()}


def codes_emitted(source: str) -> dict[str, set[str]]:
    """As `emitted`, codes only: 'type' also heads lists of rule names
    ({'type', 'capacity', ...}), which are not events."""
    return {p: {v for v in values if CODE.fullmatch(v)} for p, values in emitted(source).items()}


def test_the_lua_emits_exactly_the_declared_codes():
    found = codes_emitted(library_source())
    for position in POSITIONS:
        missing = found[position] - DECLARED[position]
        never = DECLARED[position] - found[position]
        assert not missing, f"the Lua emits {position} values engine/codes.py lacks: {sorted(missing)}"
        assert not never, f"engine/codes.py declares {position} values the Lua never emits: {sorted(never)}"


def test_what_is_not_a_code_is_a_rule_name():
    """A lower-case value where a code goes is only ever a rule name after
    'type' in a list of rules, so filtering codes by case hides nothing."""
    found = emitted(library_source())
    for position in ("decision", "code", "reason"):
        assert all(CODE.fullmatch(v) for v in found[position]), found[position]
    assert {v for v in found["type"] if not CODE.fullmatch(v)} <= {"capacity", "state"}


@pytest.mark.parametrize("added, position, code", [
    ("emit(K, {'type', 'BOGUS_EVENT', 'ts', fmt(now)})", "type", "BOGUS_EVENT"),
    ("local x = {'decision', ok and 'MAYBE' or 'REJECTED'}", "decision", "MAYBE"),
    ("local y = {'code', v == 'X' and 'BOGUS_CODE' or ''}", "code", "BOGUS_CODE"),
    ("if true then return rejected('INVALID_STATE', 'BOGUS_REASON', true) end", "reason", "BOGUS_REASON"),
    ("if true then return rejected('BOGUS_PUBLIC', 'SOLD_OUT', true) end", "code", "BOGUS_PUBLIC"),
    ("if true then return reject('BOGUS_RULE_REASON') end", "reason", "BOGUS_RULE_REASON"),
])
def test_the_collector_sees_a_code_added_to_the_lua(added, position, code):
    source = library_source()
    # inside resv_reserve / resv_configure, where `rejected` / `reject` are in scope
    anchor = "  if not r then return reject('UNKNOWN_RESOURCE') end" if "reject(" in added and "rejected" not in added \
        else "  if not r then return rejected('INVALID_STATE', 'UNKNOWN_RESOURCE', false) end"
    assert anchor in source
    changed = source.replace(anchor, added + "\n" + anchor)
    assert code not in codes_emitted(source)[position]
    assert code in codes_emitted(changed)[position]


def test_the_collector_ignores_what_is_not_emitted():
    found = emitted(library_source())
    assert "LEFT" in found["reason"]  # emitted as a reason...
    assert "NOTIFIED" not in found["reason"] | found["code"] | found["decision"]  # ...a status is not
    assert "decision" not in found["decision"]  # field('decision') copies, it emits no literal


