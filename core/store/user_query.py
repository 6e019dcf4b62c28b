"""What ``mlfleet db query`` may run: one SELECT (or EXPLAIN of one) that only reads the store.

Why DuckDB's own parser and not patterns: SQL has comments, quoting, case,
option lists (``EXPLAIN (ANALYZE)``) and a dozen ways to spell one thing; a
regex sees text, DuckDB sees the statement it will run. So the statement is
split and typed by ``extract_statements`` and its parse tree, as DuckDB
serialises it (``json_serialize_sql``), is walked node by node:

- every relation must be a table or view of the store, a system view, or a
  CTE in scope (a name that is none of these would become a replacement scan:
  ``'/etc/passwd'``, ``'x.csv'``);
- every table function must be on a short list (``range``, ``unnest``,
  ``duckdb_tables()``...); file readers only when ``query.allow_file_reads``
  says so; anything else (``checkpoint()``, ``query()``, ``sqlite_scan``,
  ``enable_profiling()``...) is refused;
- every other function must be one this DuckDB has loaded, without side
  effects (DuckDB's own ``has_side_effects`` flag: ``nextval``, ``setval``,
  ``setseed``...), so nothing is autoloaded and no sequence moves;
- node kinds this walker does not know (a later DuckDB may add some) are
  refused until someone has looked at them: refusing is the safe mistake.

The walk is pure: it needs a connection only to ask DuckDB's parser and
catalog, never to bind or run the user's SQL. ``query_pool`` runs what passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.words import with_article

from mlfleet.core.store import value_sizes

SAFE_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "repeat", "json_each", "json_tree",
    "duckdb_columns", "duckdb_constraints", "duckdb_databases", "duckdb_dependencies", "duckdb_extensions",
    "duckdb_functions", "duckdb_indexes", "duckdb_keywords", "duckdb_memory", "duckdb_optimizers",
    "duckdb_schemas", "duckdb_sequences", "duckdb_settings", "duckdb_tables", "duckdb_types", "duckdb_views",
    "pragma_version", "pragma_platform", "pragma_database_size", "pragma_collations",
    "pg_timezone_names", "icu_calendar_names",
})
FILE_TABLE_FUNCTIONS = frozenset({
    "read_csv", "read_csv_auto", "read_parquet", "parquet_scan", "read_json", "read_json_auto",
    "read_json_objects", "read_json_objects_auto", "read_ndjson", "read_ndjson_auto", "read_ndjson_objects",
    "read_text", "read_blob", "glob", "sniff_csv", "parquet_metadata", "parquet_schema",
    "parquet_file_metadata", "parquet_kv_metadata",
})
# read_csv options that create a table of rejected lines: a write, even if only a temporary one.
_WRITING_OPTIONS = frozenset({"store_rejects", "rejects_table", "rejects_scan", "rejects_limit"})
# DuckDB flags these as having side effects, but they only read or compute.
_HARMLESS_VOLATILE = frozenset({
    "random", "uuid", "gen_random_uuid", "uuidv4", "uuidv7", "error", "current_query", "current_query_id",
    "current_connection_id", "current_transaction_id", "stats", "vector_type", "sleep_ms",
})
# The binder handles these itself; they are in no catalog.
_BINDER_FUNCTIONS = frozenset({"unnest", "unlist"})
# Refused whatever a later DuckDB says about their side effects.
_NEVER = frozenset({"nextval", "setval", "currval", "setseed", "write_log", "json_execute_serialized_sql"})
# System views that show what other sessions did (queries, prepared statements).
_HIDDEN_VIEWS = frozenset({"duckdb_logs", "pg_prepared_statements"})
_SHOW_SPECIAL = frozenset({'"tables"', '"databases"', "__show_tables_expanded"})
_SEARCH_SCHEMAS = ("main", "pg_catalog")

_TABLE_REFS = frozenset({"BASE_TABLE", "JOIN", "SUBQUERY", "TABLE_FUNCTION", "EMPTY", "EXPRESSION_LIST",
                         "SHOW_REF", "PIVOT"})
_QUERY_NODES = frozenset({"SELECT_NODE", "SET_OPERATION_NODE", "RECURSIVE_CTE_NODE", "CTE_NODE"})
_EXPRESSIONS = frozenset({"BETWEEN", "CASE", "CAST", "COLLATE", "COLUMN_REF", "COMPARISON", "CONJUNCTION",
                          "CONSTANT", "FUNCTION", "LAMBDA", "LAMBDA_REF", "OPERATOR", "PARAMETER",
                          "POSITIONAL_REFERENCE", "STAR", "SUBQUERY", "WINDOW", "TYPE"})
# The parse tree is ~70 times the SQL's size: this keeps it to tens of MB in the controller.
MAX_SQL_BYTES = 256 * 1024
_ONLY = "db query runs one SELECT (or EXPLAIN of one) and changes nothing"
_FILES_OFF = "reading files through db query is off (query.allow_file_reads in config.yaml)"


class QueryRefused(UsageError):
    """The SQL would do more than read the store (or cannot be checked); the sentence says what and why."""


class FileReadsOff(QueryRefused):
    """The SQL reads a file and file reads are off (for this caller: in team mode only admins read files)."""


@dataclass(frozen=True)
class Catalog:
    """What a user query may name, read from the store's connection (names in DuckDB's ASCII lower case)."""

    store: str
    relations: frozenset[tuple[str, str, str]]  # (catalog, schema, name)
    functions: frozenset[str]  # scalar, aggregate, window functions and macros without side effects
    effectful: frozenset[str]  # the same kinds, with them
    settings: frozenset[str]

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection, known: "Catalog | None" = None) -> "Catalog":
        """Read from ``con``; functions and settings may come from ``known`` (they cannot change while the
        store is open: no extension loads, the configuration is locked; reading them costs ~15 ms)."""
        store = con.execute("select current_database()").fetchone()[0]
        rows = con.execute("""select database_name, schema_name, table_name from duckdb_tables()
                              union all select database_name, schema_name, view_name from duckdb_views()""").fetchall()
        relations = frozenset((fold(c), fold(s), fold(n)) for c, s, n in rows
                              if fold(c) in (fold(store), "system") and fold(n) not in _HIDDEN_VIEWS)
        if known is not None:
            return cls(fold(store), relations, known.functions, known.effectful, known.settings)
        rows = con.execute("""select distinct function_name, has_side_effects from duckdb_functions()
                              where function_type in ('scalar', 'aggregate', 'window', 'macro')""").fetchall()
        functions = frozenset(fold(n) for n, effects in rows if not effects or fold(n) in _HARMLESS_VOLATILE) - _NEVER
        effectful = frozenset(fold(n) for n, _ in rows) - functions
        settings = frozenset(fold(r[0]) for r in con.execute("select name from duckdb_settings()").fetchall())
        return cls(fold(store), relations, functions, effectful | _NEVER, settings)


def fold(name: str) -> str:
    """DuckDB's case folding of identifiers: ASCII only (``str.lower`` would turn a Kelvin sign into k)."""
    return name.translate(_ASCII_LOWER)


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def check_query(con: duckdb.DuckDBPyConnection, sql: str, catalog: Catalog, allow_file_reads: bool = False) -> None:
    """Raise QueryRefused unless ``sql`` is one statement that only reads what ``catalog`` lists."""
    if len(sql.encode(errors="replace")) > MAX_SQL_BYTES:
        raise QueryRefused(f"db query refused {len(sql.encode(errors='replace')):,} bytes of SQL: it takes "
                           f"{MAX_SQL_BYTES // 1024} KiB at most; load large inputs as files or tables instead")
    try:
        sql.encode()
    except UnicodeEncodeError:
        raise QueryRefused("db query refused the SQL: it is not valid Unicode text (a lone surrogate)") from None
    bad = next((ch for ch in sql if ord(ch) < 32 and ch not in "\t\n\r"), None)
    if bad is not None:  # a NUL could end the text early for one reader of it and not for another
        raise QueryRefused(f"db query refused the SQL: it holds the control character U+{ord(bad):04X}; remove it")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"SQL does not parse: {first_line(exc)}") from None
    if len(statements) != 1:
        raise QueryRefused(f"db query refused {len(statements)} statements: give exactly one ({_ONLY})")
    kind = statement_kind(statements[0])
    shown = first_keyword(sql, kind)
    if kind == "EXPLAIN":
        sql = explained_statement(sql)
        try:
            inner = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryRefused(f"db query cannot find the statement this EXPLAIN explains: {first_line(exc)}") from None
        kind = statement_kind(inner[0]) if len(inner) == 1 else "multi-statement"
        if kind != "SELECT":
            raise QueryRefused(f"db query refused EXPLAIN of this {first_keyword(sql, kind)} statement: {_ONLY}")
    elif kind != "SELECT":
        raise QueryRefused(f"db query refused this {shown} statement: {_ONLY}")
    try:
        tree = json.loads(con.execute("select json_serialize_sql(?)", [sql]).fetchone()[0])
        if tree.get("error"):
            raise QueryRefused(f"db query cannot check this statement ({tree.get('error_message', 'no parse tree')}); "
                               "write it as a plain SELECT")
        Walk(catalog, allow_file_reads).visit(tree["statements"], frozenset())
    except RecursionError:  # DuckDB parses 1000 levels; Python's stack holds fewer of the tree's
        raise QueryRefused("db query cannot check SQL nested this deeply; "
                           "split the expression or the subqueries") from None


def first_keyword(sql: str, kind: str) -> str:
    """The statement's first keyword as the user wrote it (INSTALL, CHECKPOINT, USE), for messages only.

    DuckDB's statement type names the machinery (INSTALL is a LOAD, USE a
    SET, CHECKPOINT a CALL); the user should read back what they typed.
    ``kind`` stands in where the first word says little (WITH, a parenthesis).
    """
    raw = sql.encode()
    every = duckdb.tokenize(sql)
    ends = [offset for offset, _ in every[1:]] + [len(raw)]
    words = []
    for (offset, token), end in zip(every, ends):
        if token.name == "comment":
            continue
        word = raw[offset:end].decode(errors="replace").strip().upper()
        if token.name != "keyword" or not word.isalpha() or word == "WITH":
            break
        words.append(word)
        if word != "FORCE":  # FORCE CHECKPOINT, FORCE INSTALL: the verb is the second word
            break
    return " ".join(words) if words and words[-1] != "FORCE" else kind


def statement_kind(statement: Any) -> str:
    """SELECT, EXPLAIN, COPY...; a kind this duckdb module has no name for is refused like any other."""
    try:
        return str(statement.type.name)
    except ValueError:
        return "unnamed"


def explained_statement(sql: str) -> str:
    """The statement after ``EXPLAIN [ANALYZE | (options)]``, found with DuckDB's tokenizer (comments, case, spaces)."""
    raw = sql.encode()  # the tokenizer's offsets count bytes
    every = duckdb.tokenize(sql)
    ends = [offset for offset, _ in every[1:]] + [len(raw)]
    tokens = [(offset, raw[offset:end].decode(errors="replace").strip())
              for (offset, kind), end in zip(every, ends) if kind.name != "comment"]
    texts = [text for _, text in tokens]
    if not texts or texts[0].upper() != "EXPLAIN":
        raise QueryRefused("db query cannot find the statement this EXPLAIN explains; write EXPLAIN SELECT ...")
    i = 1
    if i < len(texts) and texts[i].upper() in ("ANALYZE", "ANALYSE"):
        i += 1
    elif i < len(texts) and texts[i] == "(":
        while i < len(texts) and texts[i] != ")":
            i += 1
            if i < len(texts) and texts[i] == "(":
                raise QueryRefused("db query refused the EXPLAIN options: give plain names, e.g. EXPLAIN (ANALYZE)")
        i += 1
    if i >= len(tokens):
        raise QueryRefused("db query cannot find the statement this EXPLAIN explains; write EXPLAIN SELECT ...")
    return raw[tokens[i][0]:].decode()


class Walk:
    """One pass over a parse tree; ``scope`` holds the CTE names a relation may name at that point."""

    def __init__(self, catalog: Catalog, allow_file_reads: bool) -> None:
        self.catalog = catalog
        self.files = allow_file_reads
        self.lambdas = 0  # how deep in lambda bodies the walk is
        self.built = 0  # bytes per row the query's sized calls build together (value_sizes.py)

    def visit(self, node: Any, scope: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item, scope)
            return
        if not isinstance(node, dict):
            return
        kind = node.get("type") if isinstance(node.get("type"), str) else None
        if "class" in node:
            if node["class"] not in _EXPRESSIONS:
                raise QueryRefused(f"db query does not check {node['class'].lower()} expressions yet; "
                                   "write the query without it")
            if node["class"] in ("FUNCTION", "WINDOW"):
                self.function(node)
            if node["class"] == "LAMBDA":
                self.lambdas += 1
                try:
                    for value in node.values():
                        self.visit(value, scope)
                finally:
                    self.lambdas -= 1
                return
        elif kind is not None and kind.endswith("_NODE"):
            if kind not in _QUERY_NODES:
                raise QueryRefused(f"db query does not check {with_article(kind.lower().replace('_', ' '))} yet; "
                                   "write the query without it")
            scope = self.ctes(node, scope)
            if kind == "RECURSIVE_CTE_NODE":  # only the recursive part sees the CTE itself
                self.visit(node.get("left"), scope)
                self.visit(node.get("right"), scope | {fold(node.get("cte_name", ""))})
                node = {k: v for k, v in node.items() if k not in ("left", "right")}
            node = {k: v for k, v in node.items() if k != "cte_map"}
        elif kind is not None and "sample" in node:
            if kind not in _TABLE_REFS:
                raise QueryRefused(f"db query does not check {with_article(kind.lower().replace('_', ' '))} in FROM "
                                   "yet; write the query without it")
            if kind == "BASE_TABLE":
                self.relation(node, scope)
            elif kind == "SHOW_REF":
                self.show(node, scope)
            elif kind == "TABLE_FUNCTION":
                self.table_function(node["function"], scope)
                node = {k: v for k, v in node.items() if k != "function"}
        for value in node.values():
            self.visit(value, scope)

    def ctes(self, node: dict[str, Any], scope: frozenset[str]) -> frozenset[str]:
        """Walk a node's CTEs: each sees only those before it (DuckDB resolves no forward references)."""
        for entry in (node.get("cte_map") or {}).get("map", []):
            self.visit(entry.get("value"), scope)
            scope = scope | {fold(entry["key"])}
        return scope

    def function(self, node: dict[str, Any]) -> None:
        name = fold(node.get("function_name", ""))
        if name in value_sizes.SIZED and (node.get("schema") or "") in ("", "main", "pg_catalog"):
            self.sized(name, node)
        if name in self.catalog.functions or name in _BINDER_FUNCTIONS:
            return
        if name in self.catalog.effectful:
            raise QueryRefused(f"db query refused {name}(): it has side effects (a sequence, the random seed, "
                               "the log, other SQL); db query only reads")
        raise QueryRefused(f"db query refused {name}(): it is not a function this DuckDB has loaded "
                           "(db query never loads or installs extensions)")

    def sized(self, name: str, node: dict[str, Any]) -> None:
        """A function whose value grows with an argument: bounded, or refused (value_sizes.py says why)."""
        if self.lambdas:
            raise QueryRefused(f"db query refused {name}() inside a lambda (x -> ...): it would build its value "
                               "once per element, beyond what store.memory_limit counts")
        try:
            alone = value_sizes.bytes_built(name, node)
        except value_sizes.TooLarge as exc:
            raise QueryRefused(f"db query refused {name}(): {exc}") from None
        self.built += alone
        if self.built > value_sizes.ROW_BUDGET:
            together = "" if alone == self.built else " with the query's other range(), repeat(), lpad()... calls"
            raise QueryRefused(f"db query refused {name}(): it builds about {self.built // 1024:,} KiB per row"
                               f"{together}, over {value_sizes.ROW_BUDGET // 1024} KiB (DuckDB does not count such "
                               "values against store.memory_limit); use smaller sizes, or the table function in FROM")

    def table_function(self, node: dict[str, Any], scope: frozenset[str]) -> None:
        name = fold(node.get("function_name", ""))
        if name in FILE_TABLE_FUNCTIONS:
            if not self.files:
                raise FileReadsOff(f"db query refused {name}(): {_FILES_OFF}")
            for arg in node.get("arguments", []):
                option = option_name(arg)
                if option in _WRITING_OPTIONS:
                    raise QueryRefused(f"db query refused {name}({option} = ...): it writes a table of rejected lines")
        elif name not in SAFE_TABLE_FUNCTIONS:
            raise QueryRefused(f"db query refused {name}(): it is not one of the table functions db query runs "
                               "(docs/store.md lists them)")
        self.visit(node.get("arguments"), scope)

    def relation(self, node: dict[str, Any], scope: frozenset[str]) -> None:
        catalog, schema, name = (fold(node.get(k) or "") for k in ("catalog_name", "schema_name", "table_name"))
        if not catalog and not schema and name in scope:
            return
        if self.known(catalog, schema, name) or self.files:
            return
        shown = ".".join(p for p in (node.get("catalog_name"), node.get("schema_name"), node.get("table_name")) if p)
        if any(mark in name for mark in "/.:\\"):
            raise FileReadsOff(f"db query refused {shown!r}: it is not a table of the store, and {_FILES_OFF}")
        raise QueryRefused(f"db query refused {shown!r}: it is not a table or view of the store "
                           "('select table_name from duckdb_tables()' lists them)")

    def known(self, catalog: str, schema: str, name: str) -> bool:
        """Whether DuckDB finds ``catalog.schema.name`` in the store or the system catalog (no replacement scan)."""
        places = (self.catalog.store, "system")
        if catalog:
            return catalog in places and (catalog, schema or "main", name) in self.catalog.relations
        if schema:
            return any((c, schema, name) in self.catalog.relations for c in places) or (
                schema in places and (schema, "main", name) in self.catalog.relations)
        return any((c, s, name) in self.catalog.relations for c in places for s in _SEARCH_SCHEMAS)

    def show(self, node: dict[str, Any], scope: frozenset[str]) -> None:
        """DESCRIBE/SUMMARIZE carry a query (walked like any other); SHOW names a relation or a setting."""
        show_type, name = node.get("show_type"), node.get("table_name") or ""
        if show_type == "SHOW_SPECIAL" and name in _SHOW_SPECIAL:
            return
        if show_type == "SHOW" and name and (fold(name) in self.catalog.settings or self.known(
                fold(node.get("catalog_name") or ""), fold(node.get("schema_name") or ""), fold(name))):
            return
        if show_type in ("DESCRIBE", "SUMMARY") and not name:
            return
        raise QueryRefused(f"db query refused SHOW {name or show_type}: "
                           "it is not a table, view or setting of the store")


def option_name(arg: dict[str, Any]) -> str:
    """The name of a table function's named argument, written ``name := v`` or ``name = v``; '' for a positional one."""
    if arg.get("name"):
        return fold(arg["name"])
    expression = arg.get("expression") or {}
    left = expression.get("left") or {}
    if expression.get("type") == "COMPARE_EQUAL" and left.get("class") == "COLUMN_REF":
        return fold(".".join(left.get("column_names", [])))
    return ""


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
