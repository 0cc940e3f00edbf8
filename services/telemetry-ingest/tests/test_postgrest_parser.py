"""The PostgREST parser and compiler without a database: operators, trees, select, order, errors."""

from __future__ import annotations

import json
import re

import pytest

from telemetry_ingest.api.postgrest import (
    Catalogue,
    Column,
    CompiledQuery,
    Condition,
    DeleteQuery,
    Filter,
    InsertQuery,
    JsonStep,
    OrderTerm,
    PostgrestError,
    ReadQuery,
    Relation,
    SelectItem,
    UpdateQuery,
    build_response,
    compile_query,
    error_from_database,
    parse_request,
    status_for_sqlstate,
)

BESS = Relation(
    "flux",
    "mg_bess_readings",
    {
        "time": Column("time", "timestamp with time zone", nullable=False),
        "device_id": Column("device_id", "uuid", nullable=False),
        "id": Column("id", "uuid", has_default=True, default_expression="gen_random_uuid()"),
        "soe": Column("soe", "real", nullable=False),
        "target_power": Column("target_power", "real", nullable=False),
        "command_source": Column("command_source", "smallint"),
        "metadata": Column("metadata", "jsonb"),
        "name": Column("name", "text"),
    },
)
CATALOGUE = Catalogue("flux", {"mg_bess_readings": BESS})


def read(query: str, headers: dict[str, str] | None = None, max_rows: int | None = None) -> ReadQuery:
    parsed = parse_request(
        CATALOGUE, method="GET", relation="mg_bess_readings", query=query, headers=headers or {}, max_rows=max_rows
    )
    assert isinstance(parsed, ReadQuery)
    return parsed


def where(query: str) -> tuple[Filter | Condition, ...]:
    return read(query).where.children


def refused(query: str, method: str = "GET", body: bytes = b"", relation: str = "mg_bess_readings") -> PostgrestError:
    with pytest.raises(PostgrestError) as caught:
        parse_request(CATALOGUE, method=method, relation=relation, query=query, headers={}, body=body)
    return caught.value


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("soe=eq.50", Filter("soe", "eq", "50")),
        ("soe=neq.50", Filter("soe", "neq", "50")),
        ("soe=gt.50", Filter("soe", "gt", "50")),
        ("soe=gte.50", Filter("soe", "gte", "50")),
        ("soe=lt.50", Filter("soe", "lt", "50")),
        ("soe=lte.50", Filter("soe", "lte", "50")),
        ("name=like.*BESS*", Filter("name", "like", "%BESS%")),
        ("name=ilike.*bess?", Filter("name", "ilike", "%bess?")),
        ("name=in.(WLCE,HMCE)", Filter("name", "in", ("WLCE", "HMCE"))),
        ('name=in.("a,b",c)', Filter("name", "in", ("a,b", "c"))),
        ("name=in.()", Filter("name", "in", ())),
        ("metadata=is.null", Filter("metadata", "is", "null")),
        ("command_source=is.not_null", Filter("command_source", "is", "not_null")),
        ("name=is.TRUE", Filter("name", "is", "true")),
        ("name=is.false", Filter("name", "is", "false")),
        ("name=is.unknown", Filter("name", "is", "unknown")),
        ("soe=not.eq.50", Filter("soe", "eq", "50", negated=True)),
        ("soe=not.in.(1,2)", Filter("soe", "in", ("1", "2"), negated=True)),
        ("time=gte.2024-01-01T00:00:00Z", Filter("time", "gte", "2024-01-01T00:00:00Z")),
        ("name=eq.a.b.c", Filter("name", "eq", "a.b.c")),
    ],
)
def test_every_operator_parses(query: str, expected: Filter) -> None:
    assert where(query) == (expected,)


def test_repeated_filters_on_one_column_are_anded() -> None:
    assert where("soe=gt.50&soe=lt.80") == (Filter("soe", "gt", "50"), Filter("soe", "lt", "80"))


def test_nested_logic_trees() -> None:
    (tree,) = where("or=(soe.eq.1,and(target_power.gt.2,metadata.is.null))")
    assert tree == Condition(
        "or",
        (
            Filter("soe", "eq", "1"),
            Condition("and", (Filter("target_power", "gt", "2"), Filter("metadata", "is", "null"))),
        ),
    )


def test_the_seeds_nested_form_with_equals_sign_and_negations() -> None:
    (tree,) = where("and=(device_id.eq.x,or=(soe.lt.20,soe.gt.80))")
    assert tree == Condition(
        "and",
        (Filter("device_id", "eq", "x"), Condition("or", (Filter("soe", "lt", "20"), Filter("soe", "gt", "80")))),
    )
    (negated,) = where('not.or=(soe.not.eq.1,not.and(name.eq."a,b",name.in.(x,"y)")))')
    assert negated == Condition(
        "or",
        (
            Filter("soe", "eq", "1", negated=True),
            Condition("and", (Filter("name", "eq", "a,b"), Filter("name", "in", ("x", "y)"))), negated=True),
        ),
        negated=True,
    )


def test_select_order_limit_offset_and_range() -> None:
    query = read("select=time,power:target_power&order=time.desc.nullslast,soe&limit=10&offset=5")
    assert query.select == (SelectItem("time"), SelectItem("target_power", "power"))
    assert query.order == (OrderTerm("time", True, False), OrderTerm("soe"))
    assert (query.offset, query.limit) == (5, 10)
    assert read("select=*").select == tuple(SelectItem(name) for name in BESS.columns)
    ranged = read("", {"Range": "10-19", "Range-Unit": "items"})
    assert (ranged.offset, ranged.limit) == (10, 10)
    both = read("limit=5", {"Range": "0-9"})
    assert (both.offset, both.limit) == (0, 5)
    capped = read("", max_rows=100)
    assert capped.limit == 100
    assert read("order=soe.nullsfirst").order == (OrderTerm("soe", False, True),)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("order=id.asc.nullslasttt", '"failed to parse order (id.asc.nullslasttt)" (line 1, column 17)'),
        ("order=soe.up", '"failed to parse order (soe.up)" (line 1, column 5)'),
        ("soe=xx.5", '"failed to parse filter (xx.5)" (line 1, column 1)'),
        ("soe=eq", '"failed to parse filter (eq)" (line 1, column 1)'),
        ("name=in.a,b", '"failed to parse filter (in.a,b)" (line 1, column 1)'),
        ("name=is.maybe", '"failed to parse filter (is.maybe)" (line 1, column 1)'),
        ("or=(soe.eq.1", '"failed to parse logic tree ((soe.eq.1)" (line 1, column 1)'),
        # The inner "and(" takes the last ")", so the outer tree ends without one: the error is at the end of input.
        ("or=(soe.eq.1,and(soe.gt.2)", '"failed to parse logic tree ((soe.eq.1,and(soe.gt.2))" (line 1, column 24)'),
        ("or=()", '"failed to parse logic tree (())" (line 1, column 2)'),
        ("limit=ten", '"failed to parse limit parameter (ten)" (line 1, column 1)'),
    ],
)
def test_parse_errors_are_pgrst100(query: str, message: str) -> None:
    error = refused(query)
    assert (error.status, error.code, error.message) == (400, "PGRST100", message)
    assert set(error.body()) == {"code", "details", "hint", "message"}


@pytest.mark.parametrize(
    "query",
    ["foo=eq.1", "select=time,foo", "order=foo.desc", "or=(foo.eq.1,soe.eq.2)", "and=(soe.eq.1,or(foo.is.null))"],
)
def test_unknown_columns_are_42703(query: str) -> None:
    error = refused(query)
    assert (error.status, error.code, error.message) == (400, "42703", "column mg_bess_readings.foo does not exist")
    assert error.details is None and error.hint is None


def test_unknown_table_embedding_and_body_errors() -> None:
    missing = refused("", relation="mg_bess_reading")
    assert (missing.status, missing.code) == (404, "PGRST205")
    assert missing.message == "Could not find the table 'flux.mg_bess_reading' in the schema cache"
    assert missing.hint == "Perhaps you meant the table 'flux.mg_bess_readings'"
    assert refused("select=*,devices(*)").code == "PGRST200"
    for body in (b"", b"{not json", b"42", b"[1, 2]"):
        error = refused("", method="POST", body=body)
        assert (error.status, error.code, error.message) == (400, "PGRST102", "Empty or invalid json")
    unknown_key = refused("", method="POST", body=b'{"soe": 1, "colour": "red"}')
    assert (unknown_key.status, unknown_key.code) == (400, "PGRST204")
    assert unknown_key.message == "Could not find the 'colour' column of 'mg_bess_readings' in the schema cache"


@pytest.mark.parametrize(("method", "verb"), [("DELETE", "DELETE"), ("PATCH", "UPDATE")])
def test_patch_and_delete_without_filters_are_refused(method: str, verb: str) -> None:
    error = refused("select=id", method=method, body=b'{"soe": 1}')
    assert (error.status, error.code, error.message) == (400, "21000", f"{verb} requires a WHERE clause")


def test_insert_is_one_statement_over_the_union_of_keys_and_absent_keys_take_defaults() -> None:
    body = json.dumps(
        [{"soe": 1, "time": "t1"}, {"time": "t2", "soe": 2}, {"soe": 3, "time": "t3", "id": "x"}]
    ).encode()
    query = parse_request(
        CATALOGUE,
        method="POST",
        relation="mg_bess_readings",
        query="",
        headers={"Prefer": "return=representation, count=exact, resolution=ignore-duplicates"},
        body=body,
    )
    assert isinstance(query, InsertQuery)
    assert (query.rows.columns, query.rows.row_count, query.rows.partial) == (("time", "id", "soe"), 3, ("id",))
    assert query.representation and query.count_exact and query.resolution == "ignore-duplicates"
    compiled = compile_query(CATALOGUE, query)
    assert "ON CONFLICT DO NOTHING" in compiled.sql
    assert compiled.parameters == (query.rows.rows_json,)
    assert compiled.sql.count("INSERT INTO") == 1
    # The id a row leaves out is its default, decided in SQL row by row.
    assert (
        """CASE WHEN "_request_row".body -> 'id' IS NOT NULL THEN "_request_record"."id" ELSE gen_random_uuid() END"""
        in (compiled.sql)
    )


def test_compiled_filters_are_parameterised_and_cast() -> None:
    compiled = compile_query(CATALOGUE, read("time=gte.2024-01-01&name=in.(a,b)&name=like.x*&soe=not.is.null"))
    assert compiled.parameters == ("2024-01-01", ["a", "b"], "x%")
    assert '"mg_bess_readings"."time" >= $1::text::timestamp with time zone' in compiled.sql
    assert '"mg_bess_readings"."name" = ANY ($2::text[]::text[])' in compiled.sql
    assert '"mg_bess_readings"."name"::text LIKE $3::text' in compiled.sql
    assert 'NOT ("mg_bess_readings"."soe" IS NULL)' in compiled.sql


def test_values_never_reach_the_sql_text() -> None:
    hostile = "'; DROP TABLE flux.mg_bess_readings; --"
    compiled: CompiledQuery = compile_query(CATALOGUE, read(f'name=eq.{hostile}&or=(name.eq."{hostile}")'))
    assert hostile not in compiled.sql
    assert compiled.parameters == (hostile, hostile)


def test_update_and_delete_queries() -> None:
    update = parse_request(
        CATALOGUE, method="PATCH", relation="mg_bess_readings", query="soe=lt.5", headers={}, body=b'{"soe": 9}'
    )
    assert isinstance(update, UpdateQuery) and update.columns == ("soe",)
    delete = parse_request(CATALOGUE, method="DELETE", relation="mg_bess_readings", query="soe=lt.5", headers={})
    assert isinstance(delete, DeleteQuery) and not delete.representation
    assert "DELETE FROM" in compile_query(CATALOGUE, delete).sql
    refusal = refused("soe=lt.5&limit=1", method="DELETE")
    assert refusal.status == 400


def test_responses_carry_content_range_and_status() -> None:
    counted = read("limit=10", {"Prefer": "count=exact"})
    page = build_response(counted, total_count=123, page_count=10, body="[]")
    assert (page.status, page.headers["Content-Range"]) == (206, "0-9/123")
    empty = build_response(counted, total_count=0, page_count=0, body="[]")
    assert (empty.status, empty.headers["Content-Range"]) == (200, "*/0")
    beyond = build_response(read("offset=50", {"Prefer": "count=exact"}), total_count=5, page_count=0, body="[]")
    assert beyond.status == 416 and json.loads(beyond.body or "")["code"] == "PGRST103"
    uncounted = build_response(read(""), total_count=None, page_count=3, body="[1,2,3]")
    assert (uncounted.status, uncounted.headers["Content-Range"]) == (200, "0-2/*")
    insert = parse_request(CATALOGUE, method="POST", relation="mg_bess_readings", query="", headers={}, body=b"{}")
    created = build_response(insert, total_count=None, page_count=1, body=None)
    assert (created.status, created.body, created.headers["Preference-Applied"]) == (201, None, "return=minimal")
    single = read("", {"Accept": "application/vnd.pgrst.object+json"})
    assert build_response(single, total_count=None, page_count=2, body="{}").status == 406


class _DatabaseError(Exception):
    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate, self.message, self.detail, self.hint = sqlstate, message, detail, None


@pytest.mark.parametrize(
    ("sqlstate", "anonymous", "status"),
    [
        ("23505", False, 409),
        ("23503", False, 409),
        ("22P02", False, 400),
        ("22007", False, 400),
        ("23514", False, 400),
        ("42501", True, 401),
        ("42501", False, 403),
        ("42P01", False, 404),
        ("42883", False, 404),
        ("P0001", False, 400),
        ("08006", False, 503),
        ("53300", False, 503),
        ("53400", False, 500),
        ("57014", False, 500),
        ("40001", False, 500),
    ],
)
def test_database_errors_map_to_postgrest_statuses(sqlstate: str, anonymous: bool, status: int) -> None:
    assert status_for_sqlstate(sqlstate, anonymous=anonymous) == status
    error = error_from_database(_DatabaseError(sqlstate, "boom", "Key (x)=(1) already exists."), anonymous=anonymous)
    assert error.body() == {"code": sqlstate, "details": "Key (x)=(1) already exists.", "hint": None, "message": "boom"}


# --- double-quoted identifiers ------------------------------------------------------------------------

QUOTED = Relation(
    "flux",
    "odd_names",
    {
        "time": Column("time", "timestamp with time zone", nullable=False),
        "my col": Column("my col", "text"),
        'say "hi"': Column('say "hi"', "text"),
        "a,b.c": Column("a,b.c", "text"),
        " padded ": Column(" padded ", "text"),
    },
)
QUOTED_CATALOGUE = Catalogue("flux", {"odd_names": QUOTED, "mg_bess_readings": BESS})


def read_quoted(query: str) -> ReadQuery:
    parsed = parse_request(QUOTED_CATALOGUE, method="GET", relation="odd_names", query=query, headers={})
    assert isinstance(parsed, ReadQuery)
    return parsed


def refused_quoted(query: str, method: str = "GET", body: bytes = b"") -> PostgrestError:
    with pytest.raises(PostgrestError) as caught:
        parse_request(QUOTED_CATALOGUE, method=method, relation="odd_names", query=query, headers={}, body=body)
    return caught.value


def test_quoted_identifiers_in_select() -> None:
    assert read_quoted('select="my col","time"').select == (SelectItem("my col"), SelectItem("time"))
    assert read_quoted('select=when:"time","the col":"my col"').select == (
        SelectItem("time", "when"),
        SelectItem("my col", "the col"),
    )
    # Commas, dots and colons inside quotes belong to the name; spaces inside quotes are kept.
    assert read_quoted('select="a,b.c", " padded "').select == (SelectItem("a,b.c"), SelectItem(" padded "))
    assert read('select="time",soe').select == (SelectItem("time"), SelectItem("soe"))


def test_quoted_identifiers_in_order() -> None:
    assert read('order="time".desc,"soe"').order == (OrderTerm("time", True), OrderTerm("soe"))
    assert read_quoted('order="my col".asc.nullslast,"a,b.c".desc').order == (
        OrderTerm("my col", False, False),
        OrderTerm("a,b.c", True),
    )


def test_quoted_identifiers_in_filters_and_logic_trees() -> None:
    assert where('"soe"=eq.5') == (Filter("soe", "eq", "5"),)
    assert read_quoted("%22my%20col%22=eq.x").where.children == (Filter("my col", "eq", "x"),)
    assert read_quoted('"a,b.c"=in.(1,2)').where.children == (Filter("a,b.c", "in", ("1", "2")),)
    tree = read_quoted('or=("my col".eq.x,and("a,b.c".is.null,time.gte.2024-01-01))').where.children
    assert tree == (
        Condition(
            "or",
            (
                Filter("my col", "eq", "x"),
                Condition("and", (Filter("a,b.c", "is", "null"), Filter("time", "gte", "2024-01-01"))),
            ),
        ),
    )
    # A quoted key is a column even when it spells a reserved word; text after the quote is an embed path.
    assert refused('"select"=eq.1').message == "column mg_bess_readings.select does not exist"
    assert refused('"soe".x=eq.1').code == "42703"


def test_quoted_identifiers_in_columns_and_on_conflict() -> None:
    query = parse_request(
        CATALOGUE,
        method="POST",
        relation="mg_bess_readings",
        query='columns="device_id", "time","soe"&on_conflict="device_id","time"',
        headers={"Prefer": "resolution=merge-duplicates"},
        body=json.dumps([{"device_id": "d", "time": "t", "soe": 1, "name": "ignored"}]).encode(),
    )
    assert isinstance(query, InsertQuery)
    assert query.rows.columns == ("time", "device_id", "soe")
    assert query.on_conflict == ("device_id", "time")
    odd = parse_request(
        QUOTED_CATALOGUE,
        method="POST",
        relation="odd_names",
        query='columns="a,b.c","say \\"hi\\""',
        headers={},
        body=json.dumps({"a,b.c": 1, 'say "hi"': 2, "my col": 3}).encode(),
    )
    assert isinstance(odd, InsertQuery)
    assert odd.rows.columns == ('say "hi"', "a,b.c")
    unknown = refused('columns="soe","colour"', method="POST", body=b"{}")
    assert (unknown.code, unknown.message) == (
        "PGRST204",
        "Could not find the 'colour' column of 'mg_bess_readings' in the schema cache",
    )


def test_escaped_quotes_and_backslashes_in_quoted_identifiers() -> None:
    assert read_quoted(r'select="say \"hi\""').select == (SelectItem('say "hi"'),)
    assert read_quoted(r'order="say \"hi\"".desc').order == (OrderTerm('say "hi"', True),)
    assert read_quoted(r'"say \"hi\""=eq.1').where.children == (Filter('say "hi"', "eq", "1"),)
    assert read_quoted(r'or=("say \"hi\"".eq.1)').where.children == (Condition("or", (Filter('say "hi"', "eq", "1"),)),)
    # A backslash makes any character literal, itself included.
    assert read_quoted(r'select="my\ col"').select == (SelectItem("my col"),)
    assert refused(r'select="so\\e"').message == r"column mg_bess_readings.so\e does not exist"


@pytest.mark.parametrize(
    ("query", "method"),
    [
        ('select="time', "GET"),
        ('select=soe,"time\\"', "GET"),
        ('select=when:"time', "GET"),
        ('order="time.desc', "GET"),
        ('order=soe,"time', "GET"),
        ('"time=eq.1', "GET"),
        ('or=("time.eq.1)', "GET"),
        ('columns="soe,time', "POST"),
        ('on_conflict="device_id', "POST"),
        ('select="time"x', "GET"),
    ],
)
def test_unclosed_quotes_are_pgrst100(query: str, method: str) -> None:
    error = refused(query, method=method, body=b"{}")
    assert (error.status, error.code) == (400, "PGRST100"), error
    assert error.message.startswith('"failed to parse ')


def _highest_placeholder(sql: str) -> int:
    return max((int(number) for number in re.findall(r"\$(\d+)", sql)), default=0)


@pytest.mark.parametrize("query", ["soe=lt.5", "soe=lt.5&name=in.(a,b)&or=(soe.eq.1,name.like.x*)", '"soe"=gt.1'])
def test_patch_with_empty_body_binds_only_the_parameters_it_uses(query: str) -> None:
    for body in (b"{}", b'{"soe": 9}'):
        update = parse_request(
            CATALOGUE,
            method="PATCH",
            relation="mg_bess_readings",
            query=query,
            headers={"Prefer": "return=representation"},
            body=body,
        )
        assert isinstance(update, UpdateQuery)
        compiled = compile_query(CATALOGUE, update)
        assert len(compiled.parameters) == _highest_placeholder(compiled.sql)
        assert set(re.findall(r"\$(\d+)", compiled.sql)) == {str(n) for n in range(1, len(compiled.parameters) + 1)}
    # PostgREST's answer to PATCH {}: no row is touched and none is returned.
    empty = compile_query(
        CATALOGUE,
        parse_request(CATALOGUE, method="PATCH", relation="mg_bess_readings", query=query, headers={}, body=b"{}"),
    )
    assert empty.parameters == ()
    assert "WHERE FALSE" in empty.sql and "UPDATE" not in empty.sql


# --- PostgREST fidelity: quotes inside values, JSON paths, casts, media types (probe finding R4) -------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # postgrest-js quotes a value only when it holds , ( or ), and never escapes a quote inside it.
        ('name=in.(a"b,c)', Filter("name", "in", ('a"b', "c"))),
        ('name=in.(say "hi")', Filter("name", "in", ('say "hi"',))),
        # postgrest-py quotes a value holding a quote and escapes it with a backslash.
        (r'name=in.("a\"b",c)', Filter("name", "in", ('a"b', "c"))),
        # A quoted value must be followed by "," or ")"; otherwise its quotes are ordinary characters.
        ('name=in.("a"b,c)', Filter("name", "in", ('"a"b', "c"))),
        ('name=eq.a"b', Filter("name", "eq", 'a"b')),
    ],
)
def test_a_double_quote_inside_a_value_is_accepted_as_postgrest_accepts_it(query: str, expected: Filter) -> None:
    assert where(query) == (expected,)


def test_a_double_quote_inside_a_value_of_a_logic_tree() -> None:
    (tree,) = where('or=(name.eq.x"y,name.in.(q"r,"s,t"),and(name.like.*"*,soe.eq.1),name.eq."u\\"v")')
    assert tree == Condition(
        "or",
        (
            Filter("name", "eq", 'x"y'),
            Filter("name", "in", ('q"r', "s,t")),
            Condition("and", (Filter("name", "like", '%"%'), Filter("soe", "eq", "1"))),
            Filter("name", "eq", 'u"v'),
        ),
    )
    # An unquoted value runs to the next "," or ")", so it may hold "(" too; a {...} array literal keeps commas.
    (array,) = where("or=(name.eq.a(b,name.eq.{1,2})")
    assert array == Condition("or", (Filter("name", "eq", "a(b"), Filter("name", "eq", "{1,2}")))
    compiled = compile_query(CATALOGUE, read('name=in.(a"b,c)&or=(name.eq.x"y)'))
    assert compiled.parameters == (['a"b', "c"], 'x"y')


@pytest.mark.parametrize(
    ("select", "expected", "output_name"),
    [
        ("metadata->>max_power_kw", SelectItem("metadata", None, (JsonStep("->>", "max_power_kw"),)), "max_power_kw"),
        (
            "metadata->modbus->>host",
            SelectItem("metadata", None, (JsonStep("->", "modbus"), JsonStep("->>", "host"))),
            "host",
        ),
        ("power:metadata->>max_power_kw", SelectItem("metadata", "power", (JsonStep("->>", "max_power_kw"),)), "power"),
        # An index names nothing: the last key names the column, else the column itself (PostgREST's pgFmtAs).
        ("metadata->0", SelectItem("metadata", None, (JsonStep("->", "0", 0),)), "metadata"),
        ("metadata->a->-1", SelectItem("metadata", None, (JsonStep("->", "a"), JsonStep("->", "-1", -1))), "a"),
        ('metadata->>"a,b"', SelectItem("metadata", None, (JsonStep("->>", "a,b"),)), "a,b"),
        ("soe::text", SelectItem("soe", None, (), "text"), "soe"),
        ("level:soe::Double  Precision", SelectItem("soe", "level", (), "double precision"), "level"),
        (
            "metadata->>max_power_kw::numeric",
            SelectItem("metadata", None, (JsonStep("->>", "max_power_kw"),), "numeric"),
            "max_power_kw",
        ),
    ],
)
def test_json_paths_and_casts_in_select(select: str, expected: SelectItem, output_name: str) -> None:
    (item,) = read(f"select={select}").select
    assert item == expected
    assert item.output_name == output_name


def test_json_paths_in_filters_order_and_trees_compile_with_quoted_keys() -> None:
    query = read(
        "select=name,metadata->>max_power_kw&metadata->>max_power_kw=eq.5000&metadata->modbus->unit=gt.1"
        "&or=(metadata->>site.eq.WLCE,metadata->>site.is.null)&order=metadata->>max_power_kw.desc.nullslast"
    )
    path = (JsonStep("->>", "max_power_kw"),)
    assert query.where.children[:2] == (
        Filter("metadata", "eq", "5000", path=path),
        Filter("metadata", "gt", "1", path=(JsonStep("->", "modbus"), JsonStep("->", "unit"))),
    )
    assert query.order == (OrderTerm("metadata", True, False, path),)
    sql = compile_query(CATALOGUE, query).sql
    # ->> compares as text, -> as jsonb; keys are SQL literals, never bare text.
    assert """("mg_bess_readings"."metadata"->>'max_power_kw') = $1::text::text""" in sql
    assert """("mg_bess_readings"."metadata"->'modbus'->'unit') > $2::text::jsonb""" in sql
    assert """ORDER BY ("mg_bess_readings"."metadata"->>'max_power_kw') DESC NULLS LAST""" in sql


def test_json_keys_are_escaped_and_never_reach_sql_raw() -> None:
    hostile = "x') OR true; --"
    sql = compile_query(CATALOGUE, read(f'select=key:metadata->>"{hostile}"&metadata->>"{hostile}"=eq.1')).sql
    escaped = "'x'') OR true; --'"
    assert sql.count(escaped) == 2
    assert hostile not in sql.replace(escaped, "")
    backslash = compile_query(CATALOGUE, read(r'select=metadata->>"a\\b"')).sql  # the key a\b
    assert r"E'a\\b'" in backslash
    nul = refused("select=metadata->>a%00b")
    assert (nul.status, nul.code) == (400, "PGRST100")


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("select=soe->>x", "42883"),  # a JSON path needs a json or jsonb column
        ("soe->>x=eq.1", "42883"),
        ("order=soe->x", "42883"),
        ("or=(soe->>x.eq.1)", "42883"),
        ("select=metadata->", "PGRST100"),
        ("select=metadata->1234567890123", "PGRST100"),
        ("select=soe::pg_sleep", "42704"),  # casts come from an allow-list, never from the request
        ("select=soe::text;DROP TABLE x", "42704"),
        ("select=soe::text);DROP TABLE x;--", "PGRST100"),
        ("select=soe::", "PGRST100"),
        ("select=nope->>x", "42703"),
    ],
)
def test_bad_json_paths_and_casts_are_4xx(query: str, code: str) -> None:
    error = refused(query)
    assert (error.status, error.code) == (400, code), error


@pytest.mark.parametrize(
    ("accept", "csv", "singular"),
    [
        (None, False, False),
        ("", False, False),
        ("*/*", False, False),
        ("application/json", False, False),
        ("application/json; charset=utf-8", False, False),
        ("application/vnd.pgrst.array+json;nulls=stripped", False, False),
        ("application/vnd.pgrst.object+json", False, True),
        ("application/vnd.pgrst.object+json;nulls=stripped", False, True),
        ("application/vnd.pgrst.object", False, True),
        ("text/csv", True, False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False, False),
        ("text/csv;q=0.5, application/json", False, False),
        ("text/plain, text/csv", True, False),
    ],
)
def test_accept_chooses_the_media_type(accept: str | None, csv: bool, singular: bool) -> None:
    query = read("", {} if accept is None else {"Accept": accept})
    assert (query.csv, query.singular) == (csv, singular)
    assert query.strip_nulls == ("nulls=stripped" in (accept or ""))


def test_a_type_with_nulls_stripped_leaves_null_values_out() -> None:
    many = compile_query(CATALOGUE, read("", {"Accept": "application/vnd.pgrst.array+json;nulls=stripped"}))
    assert "json_strip_nulls(json_agg(page))" in many.sql
    one = compile_query(CATALOGUE, read("", {"Accept": "application/vnd.pgrst.object+json; nulls=stripped"}))
    assert "json_strip_nulls(json_agg(page) -> 0)" in one.sql
    assert not read("", {"Accept": "application/json;nulls=stripped"}).strip_nulls  # PostgREST's vendor types only


def test_blanks_around_a_trees_separators_are_skipped() -> None:
    (tree,) = where("or=( name.is.null , soe.eq.1)")
    assert tree == Condition("or", (Filter("name", "is", "null"), Filter("soe", "eq", "1")))


@pytest.mark.parametrize(
    ("accept", "method", "listed"),
    [
        ("text/plain", "GET", "text/plain"),
        ("application/xml, image/png;q=0.5", "GET", "application/xml, image/png"),
        ("application/vnd.pgrst.plan+text; options=analyze", "GET", "application/vnd.pgrst.plan+text"),
        ("text/csv", "DELETE", "text/csv"),  # CSV is offered for reads only
    ],
)
def test_a_type_not_offered_is_406_pgrst107(accept: str, method: str, listed: str) -> None:
    with pytest.raises(PostgrestError) as caught:
        parse_request(
            CATALOGUE, method=method, relation="mg_bess_readings", query="soe=eq.1", headers={"Accept": accept}
        )
    assert (caught.value.status, caught.value.code) == (406, "PGRST107")
    assert caught.value.message == f"None of these media types are available: {listed}"


def test_csv_reads_compile_to_a_header_and_quoted_fields() -> None:
    compiled = compile_query(CATALOGUE, read('select=soe,"a,b":name,soe', {"Accept": "text/csv"}))
    assert compiled.parameters[-1] == 'soe,"a,b",soe'
    assert 'FROM page AS csv_row("c1", "c2", "c3")' in compiled.sql
    response = build_response(read("", {"Accept": "text/csv"}), total_count=None, page_count=1, body="soe\n1")
    assert (response.status, response.headers["Content-Type"], response.body) == (
        200,
        "text/csv; charset=utf-8",
        "soe\n1",
    )
