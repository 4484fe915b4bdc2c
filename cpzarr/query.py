"""Sample queries: a small expression language over metadata columns that never runs code.

Users select samples with strings such as ``control == 'negcon'`` in configs, recipes and on the
command line (``samples``, ``exclude``, ``--samples``, ``--mask``, ``split_query``). Such strings
travel with shared configs, so they are parsed here by a tokenizer and a recursive-descent parser
of cpzarr's own and evaluated over the columns given, never by ``eval``, ``DataFrame.query`` or
``DataFrame.eval`` (which resolve ``@name`` against Python globals and so ran commands).

The language, a subset of pandas' query syntax::

    expression  := or
    or          := and (("or" | "|") and)*
    and         := not (("and" | "&") not)*
    not         := ("not" | "~") not | comparison
    comparison  := operand ((== | != | < | <= | > | >= | in | not in) operand)*
    operand     := name | number | string | True | False | list | "(" expression ")"
    list        := "[" [literal ("," literal)* [","]] "]"

Names are column names, bare or in backticks (`` `my column` ``); ``Metadata_compound`` finds a
column ``compound`` and ``compound`` finds ``Metadata_compound`` (Pycytominer's prefix). Chained
comparisons (``1 <= dose < 10``) mean what they mean in Python; ``== [..]`` and ``!= [..]`` mean
``in`` and ``not in``. There is no attribute access, no call, no indexing and no ``@``.
Missing values compare unequal to everything, as in pandas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cpzarr.errors import InputError

__all__ = ["evaluate_query", "parse_query", "query_mask"]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<backtick>`[^`]+`)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|&|\||~|-)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "True", "False"}
_COMPARE = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", "'": "'", '"': '"'}


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "number", "string", "op", "keyword", "end"
    text: str
    pos: int
    value: Any = None


# --- the syntax tree: tuples, evaluated below ---
# ("col", name) ("lit", value) ("list", values) ("not", a) ("and", a, b) ("or", a, b)
# ("cmp", [operands], [operators])


def _refuse(expression, pos, why):
    pointer = " " * pos + "^"
    return InputError(f"query {expression!r}: {why} at character {pos + 1}\n    {expression}\n    {pointer}")


def _tokenize(expression):
    tokens, pos = [], 0
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if match is None:
            char = expression[pos]
            if char == "@":
                why = "'@' (a reference to a Python variable) is not allowed"
            elif char == ".":
                why = "attribute access ('.') is not allowed"
            elif char in "'\"":
                why = "unterminated string"
            else:
                why = f"unexpected character {char!r}"
            raise _refuse(expression, pos, why)
        kind = match.lastgroup
        text = match.group()
        if kind == "number":
            value = float(text) if any(c in text for c in ".eE") else int(text)
            tokens.append(_Token("number", text, pos, value))
        elif kind == "string":
            body = re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), "\\" + m.group(1)), text[1:-1])
            tokens.append(_Token("string", text, pos, body))
        elif kind == "backtick":
            tokens.append(_Token("name", text, pos, text[1:-1]))
        elif kind == "name":
            tokens.append(_Token("keyword" if text in _KEYWORDS else "name", text, pos, text))
        elif kind == "op":
            tokens.append(_Token("op", text, pos, text))
        pos = match.end()
    tokens.append(_Token("end", "", len(expression)))
    return tokens


class _Parser:
    def __init__(self, expression):
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.i = 0

    @property
    def token(self):
        return self.tokens[self.i]

    def _is(self, *texts):
        return self.token.kind in ("op", "keyword") and self.token.text in texts

    def _take(self):
        token = self.token
        self.i += 1
        return token

    def _error(self, why, token=None):
        token = token or self.token
        return _refuse(self.expression, token.pos, why)

    def parse(self):
        if self.token.kind == "end":
            raise self._error("empty query")
        tree = self._or()
        if self.token.kind != "end":
            if self.token.kind == "op" and self.token.text == "(":
                raise self._error("calls are not allowed")
            if self.token.kind == "op" and self.token.text == "[":
                raise self._error("indexing is not allowed")
            raise self._error(f"unexpected {self.token.text!r}")
        return tree

    def _or(self):
        tree = self._and()
        while self._is("or", "|"):
            self._take()
            tree = ("or", tree, self._and())
        return tree

    def _and(self):
        tree = self._not()
        while self._is("and", "&"):
            self._take()
            tree = ("and", tree, self._not())
        return tree

    def _not(self):
        if self._is("not", "~"):
            self._take()
            return ("not", self._not())
        return self._comparison()

    def _comparison(self):
        operands, operators = [self._operand()], []
        while True:
            if self._is(*_COMPARE[:6], "in"):
                operators.append(self._take().text)
            elif self._is("not") and self.tokens[self.i + 1].text == "in":
                self.i += 2
                operators.append("not in")
            else:
                break
            operands.append(self._operand())
        return operands[0] if not operators else ("cmp", operands, operators)

    def _operand(self):
        token = self.token
        if token.kind == "name":
            self._take()
            return ("col", token.value)
        if token.kind in ("number", "string") or (token.kind == "keyword" and token.text in ("True", "False")):
            return ("lit", self._literal())
        if self._is("-"):
            return ("lit", self._literal())
        if self._is("("):
            self._take()
            tree = self._or()
            if not self._is(")"):
                raise self._error("expected ')'")
            self._take()
            return tree
        if self._is("["):
            self._take()
            values = []
            while not self._is("]"):
                values.append(self._literal())
                if self._is(","):
                    self._take()
                elif not self._is("]"):
                    raise self._error("expected ',' or ']' in a list")
            self._take()
            return ("list", tuple(values))
        if token.kind == "end":
            raise self._error("the query ends too early")
        raise self._error(f"unexpected {token.text!r}")

    def _literal(self):
        negative = False
        if self._is("-"):
            self._take()
            negative = True
            if self.token.kind != "number":
                raise self._error("'-' must be followed by a number")
        token = self._take()
        if token.kind == "number":
            return -token.value if negative else token.value
        if token.kind == "string":
            return token.value
        if token.kind == "keyword" and token.text in ("True", "False"):
            return token.text == "True"
        raise self._error("expected a number, a string, True or False (lists hold literals only)", token)


def parse_query(expression):
    """Parse a query into a syntax tree (nested tuples), refusing anything outside the language.

    Parameters
    ----------
    expression : str

    Returns
    -------
    tuple
        The tree that :func:`evaluate_query` walks.

    Raises
    ------
    InputError
        Naming the position of the first token outside the language (``@``, ``.``, a call, …).

    Examples
    --------
    >>> parse_query("control == 'negcon'")
    ('cmp', [('col', 'control'), ('lit', 'negcon')], ['=='])
    """
    if not isinstance(expression, str):
        raise InputError(f"a query must be a string, got {type(expression).__name__}")
    return _Parser(expression).parse()


def _column(name, columns, expression):
    if name in columns:
        return columns[name]
    bare = name[len("Metadata_"):] if name.startswith("Metadata_") else None
    if bare and bare in columns:
        return columns[bare]
    if f"Metadata_{name}" in columns:
        return columns[f"Metadata_{name}"]
    raise InputError(f"query {expression!r} names {name!r}, which is not a column; available: {sorted(columns)}")


def _compare(left, op, right, describe):
    lhs_list, rhs_list = isinstance(left, tuple), isinstance(right, tuple)
    if op in ("in", "not in") or (op in ("==", "!=") and (lhs_list or rhs_list)):
        if lhs_list and not rhs_list:
            if op in ("in", "not in"):
                raise InputError(f"{describe}: the left side of '{op}' cannot be a list")
            left, right = right, left
        if not isinstance(right, tuple):
            raise InputError(f"{describe}: the right side of '{op}' must be a list like ['a', 'b']")
        values = list(right)
        if isinstance(left, np.ndarray):
            result = pd.Series(left).isin(values).to_numpy()
        else:
            result = left in values
        return ~result if op in ("!=", "not in") else result
    if lhs_list or rhs_list:
        raise InputError(f"{describe}: a list can only follow '==', '!=', 'in' or 'not in'")
    a = pd.Series(left) if isinstance(left, np.ndarray) else left
    b = pd.Series(right) if isinstance(right, np.ndarray) else right
    try:
        result = {
            "==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b,
            "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b,
        }[op]()
    except TypeError as error:
        raise InputError(f"{describe}: cannot compare with '{op}' ({error})") from None
    return result.to_numpy(dtype=bool) if isinstance(result, pd.Series) else bool(result)


def _as_mask(value, n, describe):
    if isinstance(value, tuple):
        raise InputError(f"{describe}: a list is not True/False")
    array = np.asarray(value)
    if array.dtype != bool:
        raise InputError(f"{describe}: gives {array.dtype} values, not True/False (write a comparison)")
    return np.broadcast_to(array, (n,)) if array.ndim == 0 else array


def evaluate_query(expression, columns, n=None):
    """Evaluate a query over named columns; one True/False per row.

    Parameters
    ----------
    expression : str
        A query in the language of this module, e.g. ``"control == 'negcon' and dose >= 1"``.
    columns : mapping of str to 1-d array, or pandas.DataFrame
        The columns the query may name, all of one length.
    n : int, optional
        Number of rows (needed only when ``columns`` is empty).

    Returns
    -------
    numpy.ndarray of bool, shape (n,)

    Raises
    ------
    InputError
        For syntax outside the language, an unknown column, or a comparison of unlike types.

    Examples
    --------
    >>> import numpy as np
    >>> evaluate_query("dose in [1, 10] and not control == 'negcon'",
    ...                {"dose": np.array([1, 3, 10]), "control": np.array(["trt", "trt", "negcon"])})
    array([ True, False, False])
    """
    tree = parse_query(expression)
    if isinstance(columns, pd.DataFrame):
        columns = {str(c): columns[c].to_numpy() for c in columns.columns}
    columns = {name: np.asarray(values) for name, values in columns.items()}
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise InputError(f"query {expression!r}: columns of unequal lengths {sorted(lengths)}")
    if n is None:
        if not lengths:
            raise InputError(f"query {expression!r}: no columns to query")
        (n,) = lengths
    describe = f"query {expression!r}"

    def walk(node):
        kind = node[0]
        if kind == "col":
            return _column(node[1], columns, expression)
        if kind == "lit":
            return node[1]
        if kind == "list":
            return node[1]
        if kind == "not":
            return ~_as_mask(walk(node[1]), n, describe)
        if kind in ("and", "or"):
            a, b = _as_mask(walk(node[1]), n, describe), _as_mask(walk(node[2]), n, describe)
            return (a & b) if kind == "and" else (a | b)
        operands, operators = node[1], node[2]
        values = [walk(o) for o in operands]
        result = np.ones(n, dtype=bool)
        for left, op, right in zip(values[:-1], operators, values[1:]):
            result = result & _as_mask(_compare(left, op, right, describe), n, describe)
        return result

    return np.array(_as_mask(walk(tree), n, describe), dtype=bool)


def query_mask(expression, frame, what="query"):
    """:func:`evaluate_query` over a frame's columns, with ``what`` (e.g. ``"samples"``) named in errors.

    Parameters
    ----------
    expression : str
    frame : pandas.DataFrame
    what : str
        The name of the option the query came from, for error messages.

    Returns
    -------
    numpy.ndarray of bool, shape (len(frame),)
    """
    try:
        return evaluate_query(expression, frame, n=len(frame))
    except InputError as error:
        raise InputError(f"cannot evaluate {what}: {error}") from None
