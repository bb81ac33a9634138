"""Property-based fuzzing: the decoder in-process, then real servers over HTTP.

The decoder is the only code that sees untrusted bytes, so it gets arbitrary bytes and
JSON-shaped garbage and must answer with a list or a FastAPI-shaped ``InvalidPayload``,
never anything else (anything else is a 500). Over HTTP, arbitrary bodies and encodings
must get a documented status with a JSON ``detail``; and any *valid* batch must come back
from ``events export`` exactly as it was sent, which is the promise a 200 makes.

Bugs found this way stay at the end as regression tests with minimal bodies.
"""

from __future__ import annotations

import gzip
import json
import signal
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from support.node import Node, create_key
from trubrics_ingestion.clock import format_time, to_micros
from trubrics_ingestion.errors import InvalidPayload
from trubrics_ingestion.ingest.limits import PayloadLimits
from trubrics_ingestion.schema import MAX_BATCH_ITEMS, MAX_LATENCY_S, Event, LLMEvent, decode_batch
from trubrics_ingestion.store import batches
from trubrics_ingestion.store.codec import LZ4, pack
from trubrics_ingestion.store.expand import EventRow, expand
from trubrics_ingestion.store.ids import id_factory

LIMITS = PayloadLimits(max_event_bytes=1024 * 1024, max_depth=32)  # the defaults

FAST = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
OVER_HTTP = settings(FAST, max_examples=150)
ROUND_TRIP = settings(FAST, max_examples=30)

# Keys the LLM expansion writes itself; user properties with these names would override them.
LLM_RESERVED = {"$text", "$prompt", "$assistant_id", "latency(s)", "$prompt_id", "$generation_id"}
PUBLISH_PATHS = (
    "/publish_events",
    "/publish_llm_events",
    "/api/ingestion/publish_events",
    "/api/ingestion/publish_llm_events",
)
SMALL_LIMIT = 4096  # the fuzzed server's body limit: small, so 413 is reachable
EXPORT_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"

# ---------------------------------------------------------------- strategies

# Lone surrogates cannot be encoded as UTF-8, so no valid client can send them.
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)))
NON_EMPTY = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1)
KEYS = TEXT | st.sampled_from(["$thread_id", "country", "", "é", "\U0001f642", "a.b", "[0]"])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
PROPERTIES = st.dictionaries(KEYS, JSON_VALUES, max_size=6)
# Anything JSON can say, plus what Python's json module says beyond JSON (NaN, Infinity).
ANY_JSON = st.recursive(
    SCALARS | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children),
    max_leaves=20,
)
OFFSETS = st.integers(-(24 * 60 - 1), 24 * 60 - 1).map(lambda m: timezone(timedelta(minutes=m)))
# Every year is fair game, short of the few days at either end of datetime's range that a
# UTC offset or a prompt's latency (up to 7 days) would push out of it: those get a 422.
MOMENTS = st.datetimes(
    min_value=datetime(1, 1, 10),
    max_value=datetime(9999, 12, 30),
    timezones=st.none() | st.just(UTC) | OFFSETS,
)


@st.composite
def timestamps(draw: st.DrawFn) -> tuple[str, str]:
    """An ISO timestamp as a client writes it, and the UTC form ``export`` must give back."""
    moment = draw(MOMENTS)
    text = moment.isoformat()
    if moment.tzinfo is UTC and draw(st.booleans()):
        text = text.replace("+00:00", "Z")
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return text, utc.isoformat(timespec="microseconds").replace("+00:00", "Z")


ODD_VALUES = JSON_VALUES | st.sampled_from(
    ["", "2026-06-20T12:00:00Z", "2026-13-01T00:00:00Z", "2026-06-20", -1, -0.0, 1e308, 2**64]
)


def valid_fields(kind: str) -> dict[str, st.SearchStrategy[Any]]:
    """A valid value for every field of an item; the required fields come first."""
    stamp = timestamps().map(lambda pair: pair[0])
    if kind == "event":
        return {"user_id": NON_EMPTY, "event": NON_EMPTY, "timestamp": stamp,
                "properties": st.none() | PROPERTIES}  # fmt: skip
    names = st.none() | NON_EMPTY
    return {"user_id": NON_EMPTY, "prompt": TEXT, "generation": TEXT,
            "assistant_id": st.none() | TEXT, "latency": st.none() | st.floats(0, MAX_LATENCY_S),
            "timestamp": st.none() | stamp, "prompt_event_name": names,
            "generation_event_name": names, "properties": st.none() | PROPERTIES,
            "thread_id": st.none() | TEXT}  # fmt: skip


@st.composite
def near_valid_items(draw: st.DrawFn, kind: str) -> dict[str, Any]:
    """A valid item with up to two fields dropped or given a value of another type: the
    near misses that reach the per-field checks of the slow path (and the fast path)."""
    fields = valid_fields(kind)
    required = list(fields)[:3]
    item = {
        name: draw(values)
        for name, values in fields.items()
        if name in required or draw(st.booleans())
    }
    for name in draw(st.lists(st.sampled_from(list(fields)), max_size=2, unique=True)):
        if draw(st.booleans()):
            item.pop(name, None)
        else:
            item[name] = draw(ODD_VALUES)
    return item


def batches_of(kind: str) -> st.SearchStrategy[list[Any]]:
    """Batches around the size limit, of near-valid items, random dicts and stray values."""
    names = st.sampled_from(list(valid_fields(kind))) | TEXT
    items = near_valid_items(kind) | st.dictionaries(names, ODD_VALUES, max_size=12) | JSON_VALUES
    return st.lists(items, max_size=MAX_BATCH_ITEMS + 10)


@st.composite
def json_bytes(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> bytes:
    """JSON text in the encodings a client might produce, including broken ones."""
    text = json.dumps(draw(values), ensure_ascii=draw(st.booleans()))
    # surrogatepass turns lone surrogates into invalid UTF-8 rather than an encode error
    return text.encode("utf-8", "surrogatepass")


BODIES = (
    st.binary(max_size=2 * SMALL_LIMIT)
    | json_bytes(ANY_JSON)
    | json_bytes(batches_of("event"))
    | json_bytes(batches_of("llm"))
)

# ---------------------------------------------------------------- in-process decoder


def assert_decodes_or_explains(body: bytes, kind: str) -> None:
    """The decoder's whole contract: a batch of structs, or a FastAPI-shaped detail list."""
    try:
        items = decode_batch(body, kind)  # type: ignore[arg-type]
    except InvalidPayload as error:
        assert_fastapi_detail(error.detail)
        return
    assert isinstance(items, list) and len(items) <= MAX_BATCH_ITEMS
    assert all(isinstance(item, Event if kind == "event" else LLMEvent) for item in items)


def assert_fastapi_detail(detail: Any) -> None:
    assert isinstance(detail, list) and detail, detail
    for error in detail:
        assert isinstance(error, dict) and set(error) == {"loc", "msg", "type"}, error
        assert isinstance(error["loc"], list) and error["loc"][:1] == ["body"], error
        assert all(isinstance(part, str | int) for part in error["loc"]), error
        assert isinstance(error["msg"], str) and error["msg"], error
        assert isinstance(error["type"], str) and error["type"], error


@pytest.mark.parametrize("kind", ["event", "llm"])
@FAST
@given(body=st.binary())
@example(body=b"[" * 100_000)
@example(body=b'[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00Z"}]' * 2)
@example(body=b"[" + b"1" * 5000 + b"]")
@example(body=b"\xef\xbb\xbf[]")  # a UTF-8 byte order mark
def test_decoder_on_any_bytes(kind: str, body: bytes) -> None:
    assert_decodes_or_explains(body, kind)


@pytest.mark.parametrize("kind", ["event", "llm"])
@FAST
@given(body=json_bytes(ANY_JSON))
def test_decoder_on_any_json(kind: str, body: bytes) -> None:
    assert_decodes_or_explains(body, kind)


@pytest.mark.parametrize("kind", ["event", "llm"])
@FAST
@given(data=st.data())
def test_decoder_on_event_shaped_batches(kind: str, data: Any) -> None:
    assert_decodes_or_explains(data.draw(json_bytes(batches_of(kind))), kind)


@FAST
@given(
    moment=st.datetimes(timezones=st.none() | OFFSETS),
    latency=st.none() | st.floats(min_value=0, allow_infinity=False),
)
@example(moment=datetime(2026, 6, 20), latency=1e300)  # each a bug found by fuzzing
@example(moment=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))), latency=None)
@example(moment=datetime(999, 6, 1), latency=None)
def test_every_accepted_item_can_be_stored_and_exported(
    moment: datetime, latency: float | None
) -> None:
    """What the decoder accepts, the journal must store and ``export`` must print."""
    item = {"user_id": "u", "prompt": "p", "generation": "g", "latency": latency}
    body = json.dumps([{**item, "timestamp": moment.isoformat()}]).encode()
    try:
        items = LIMITS.decode(body, "llm")
    except InvalidPayload:
        return  # refused up front is fine; accepted-then-lost is not
    for row in expand(items, project="p", received_at=0, new_id=lambda: "id"):
        assert -(2**63) <= row.timestamp < 2**63, "does not fit SQLite's INTEGER"
        assert datetime.fromisoformat(format_time(row.timestamp).replace("Z", "+00:00"))


@FAST
@given(body=json_bytes(batches_of("event")))
@example(body=b'[{"user_id":"u","event":"e","timestamp":"0001-01-01T00:00:00+01:00"}]')
@example(body=b'[{"user_id":"u","event":"e","timestamp":"0001-01-01T00:00:00Z"}]')
@example(body=b'[{"user_id":"u","event":"e","timestamp":"9999-12-31T23:59:59.999999"}]')
@example(body=b'[{"user_id":"u","event":"e","timestamp":"9999-12-31T23:00:00-01:00"}]')
@example(
    body=b'[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00",'
    b'"properties":{"$thread_id":7.5}},'
    b'{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00+02:00",'
    b'"properties":{"$thread_id":true}}]'
)
@example(  # the name spelt with an escape, and a batch naming no thread at all
    body=b'[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00Z",'
    b'"properties":{"\\u0024thread_id":"t"}}]'
)
@example(body=b'[{"user_id":"u","event":"e","timestamp":"2026-06-20T12:00:00Z","properties":{}}]')
@example(body=b'[{"user_id":"0","event":"0","timestamp":"2000-01-01T00:00:00","properties":""}]')
def test_a_stored_batch_of_events_expands_as_its_decoded_items_do(body: bytes) -> None:
    """Readers expand stored plain events column by column (``expand_events``): the same
    rows as ``expand`` makes of what the request decoded to, and refused where it is. The
    properties are the JSON text the client wrote (``json.dumps`` puts spaces in it):
    the same object once decoded."""
    stored = batches.Stored(9, "p", "event", 1_781_956_800_123_456, pack(body), LZ4)
    try:
        items = decode_batch(body, "event")
    except InvalidPayload:
        with pytest.raises(batches.Unexpandable):
            batches.events_of(stored, node=3)
        return
    new_id = id_factory(stored.received_at // 1000, stored.batch, 3)
    expected = expand(items, project="p", received_at=stored.received_at, new_id=new_id)
    assert decoded(batches.events_of(stored, node=3)) == decoded(expected)


def decoded(rows: Iterable[EventRow]) -> list[EventRow]:
    """``rows`` with their properties decoded, for comparing them."""
    return [row._replace(properties=json.loads(row.properties)) for row in rows]


# ---------------------------------------------------------------- real servers


def start_node(factory: pytest.TempPathFactory, env: dict[str, str] | None = None) -> Node:
    """A server of our own for a whole module: ``node`` from conftest is per test, and
    restarting one per hypothesis example would cost most of the time budget."""
    data_dir = factory.mktemp("fuzz") / "data"
    key = create_key(data_dir, "fuzz")["key"]
    return Node(data_dir=data_dir, key=key, project="fuzz", env=env or {}).start()


@pytest.fixture(scope="module")
def small_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """Takes the garbage; a small body limit puts 413 within hypothesis' reach."""
    node = start_node(tmp_path_factory, {"TRUBRICS_MAX_BODY_BYTES": str(SMALL_LIMIT)})
    yield node
    node.stop(signal.SIGKILL)


@pytest.fixture(scope="module")
def trip_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """Takes only valid batches, so a stuck batch from the garbage cannot hide its events."""
    node = start_node(tmp_path_factory)
    yield node
    node.stop(signal.SIGKILL)


ENCODINGS = st.sampled_from([None, "identity", "gzip", "x-gzip", "GZIP", "", "br", "deflate"])
WIRE = st.sampled_from(["raw", "gzip", "gzip-truncated", "gzip-flipped", "gzip-bomb"])


def on_the_wire(body: bytes, wire: str, cut: int) -> bytes:
    """The body as sent: raw, gzipped, or gzip damaged in one of the ways a network does."""
    if wire == "raw":
        return body
    if wire == "gzip-bomb":
        return gzip.compress(b"[" + b" " * (50 * SMALL_LIMIT) + b"]")
    packed = gzip.compress(body)
    if wire == "gzip-truncated":
        return packed[: cut % max(len(packed), 1)]
    if wire == "gzip-flipped":
        index = cut % len(packed)
        return packed[:index] + bytes([packed[index] ^ 0xFF]) + packed[index + 1 :]
    return packed


def assert_documented_answer(response: requests.Response) -> None:
    """A status the contract lists, and a JSON body a client can act on."""
    assert response.status_code in {200, 400, 413, 415, 422}, response.text
    payload = response.json()
    if response.status_code == 200:
        assert payload["status"] == "success" and isinstance(payload["events"], int)
    elif response.status_code == 422:
        assert_fastapi_detail(payload["detail"])
    else:
        assert isinstance(payload["detail"], str) and payload["detail"]


def assert_agrees_with_decoder(response: requests.Response, body: bytes, path: str) -> None:
    """For a plain body within the limit: what the decoder refuses gets the decoder's own
    422, and what it accepts is counted right (or refused by a payload limit, not a 5xx)."""
    kind = "llm" if path.endswith("llm_events") else "event"
    try:
        items = decode_batch(body, kind)  # type: ignore[arg-type]
    except InvalidPayload as error:
        assert response.status_code == 422 and response.json()["detail"] == error.detail
        return
    if response.status_code == 200:
        assert response.json()["events"] == len(items) * (2 if kind == "llm" else 1)
    else:
        assert response.status_code in (413, 422), response.text


def test_server_answers_any_body_with_a_documented_status(small_node: Node) -> None:
    @OVER_HTTP
    @given(
        body=BODIES,
        path=st.sampled_from(PUBLISH_PATHS),
        encoding=ENCODINGS,
        wire=WIRE,
        cut=st.integers(0, 2**16),
    )
    def check(body: bytes, path: str, encoding: str | None, wire: str, cut: int) -> None:
        headers = {"content-type": "application/json"}
        if encoding is not None:
            headers["content-encoding"] = encoding
        sent = on_the_wire(body, wire, cut)
        response = small_node.post(path, data=sent, headers=headers)
        assert_documented_answer(response)
        if encoding in ("br", "deflate"):
            assert response.status_code == 415
        elif encoding in (None, "identity") and len(sent) <= SMALL_LIMIT:
            assert_agrees_with_decoder(response, sent, path)

    check()
    assert_still_serving(small_node)


def assert_still_serving(node: Node) -> None:
    """Alive and ready, and no request ever reached the app's catch-all 500."""
    assert requests.get(node.url + "/readyz", timeout=5).status_code == 200
    assert "unhandled error" not in node.log(), node.log()[-3000:]


def assert_still_healthy(node: Node) -> None:
    """Serving, and every acknowledged batch read back without a traceback. Only for
    servers fed valid batches, so a poison batch in the garbage could never hide events."""
    assert_still_serving(node)
    node.cli("events", "export")  # expands every stored batch; exit status 1 if one fails
    assert "Traceback" not in node.log(), node.log()[-3000:]


# ---------------------------------------------------------------- round trips


@st.composite
def events(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid event as a client sends it, and the timestamp export must show for it."""
    text, utc = draw(timestamps())
    event = {
        "user_id": draw(NON_EMPTY),
        "event": draw(NON_EMPTY),
        "timestamp": text,
        "properties": draw(PROPERTIES),
    }
    return event, utc


@st.composite
def llm_events(draw: st.DrawFn) -> tuple[dict[str, Any], str | None]:
    """A valid LLM event (optional fields present or not), and its generation's timestamp."""
    event: dict[str, Any] = {
        "user_id": draw(NON_EMPTY),
        "prompt": draw(TEXT),
        "generation": draw(TEXT),
        "properties": draw(
            st.dictionaries(KEYS.filter(lambda k: k not in LLM_RESERVED), JSON_VALUES, max_size=5)
        ),
    }
    optional = {
        "assistant_id": st.none() | TEXT,
        "latency": st.none() | st.integers(0, MAX_LATENCY_S) | st.floats(0, MAX_LATENCY_S),
        "prompt_event_name": st.none() | NON_EMPTY,
        "generation_event_name": st.none() | NON_EMPTY,
        "thread_id": st.none() | TEXT,
    }
    for name, values in optional.items():
        if draw(st.booleans()):
            event[name] = draw(values)
    utc = None
    if draw(st.booleans()):
        event["timestamp"], utc = draw(timestamps())
    return event, utc


def publish(node: Node, path: str, batch: list[dict[str, Any]], ascii_only: bool) -> int:
    """POST as raw bytes (escaped or UTF-8), returning the acknowledged event count."""
    body = json.dumps(batch, ensure_ascii=ascii_only).encode()
    response = node.post(path, data=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return int(response.json()["events"])


def exported_with(node: Node, marker: str) -> list[dict[str, Any]]:
    """This example's events only: the store holds every earlier example's too."""
    return [
        e for e in node.export("--project", node.project) if e["properties"].get("fuzz") == marker
    ]


def tagged(batch: list[tuple[dict[str, Any], Any]], marker: str) -> list[dict[str, Any]]:
    """The events of one example, each carrying the example's marker in its properties."""
    return [{**event, "properties": {**event["properties"], "fuzz": marker}} for event, _ in batch]


def thread_matches(properties: dict[str, Any], stored: str | None) -> bool:
    """The ``thread_id`` column for a string ``$thread_id`` (how numbers render is not pinned)."""
    value = properties.get("$thread_id")
    return stored == value if value is None or isinstance(value, str) else True


def test_valid_events_round_trip_exactly(trip_node: Node) -> None:
    @ROUND_TRIP
    @given(batch=st.lists(events(), min_size=1, max_size=5), ascii_only=st.booleans())
    def check(batch: list[tuple[dict[str, Any], str]], ascii_only: bool) -> None:
        marker = uuid.uuid4().hex
        sent = tagged(batch, marker)
        assert publish(trip_node, "/publish_events", sent, ascii_only) == len(sent)
        stored = exported_with(trip_node, marker)
        assert len(stored) == len(sent)
        for got, want, (_, utc) in zip(stored, sent, batch, strict=True):
            assert (got["user_id"], got["event"]) == (want["user_id"], want["event"])
            assert got["timestamp"] == utc
            assert got["properties"] == want["properties"]
            assert_exact_floats(got["properties"], want["properties"])
            assert thread_matches(want["properties"], got["thread_id"])
            assert (got["project"], got["source"]) == (trip_node.project, "event")

    check()
    assert_still_healthy(trip_node)


def assert_exact_floats(got: Any, want: Any) -> None:
    """``==`` says 1 == 1.0 and 0.0 == -0.0; the JSON texts must match too."""
    assert json.dumps(got, sort_keys=True) == json.dumps(want, sort_keys=True)


def test_valid_llm_events_round_trip_exactly(trip_node: Node) -> None:
    @ROUND_TRIP
    @given(batch=st.lists(llm_events(), min_size=1, max_size=4), ascii_only=st.booleans())
    def check(batch: list[tuple[dict[str, Any], str | None]], ascii_only: bool) -> None:
        marker = uuid.uuid4().hex
        sent = tagged(batch, marker)
        assert publish(trip_node, "/publish_llm_events", sent, ascii_only) == 2 * len(sent)
        stored = exported_with(trip_node, marker)
        assert len(stored) == 2 * len(sent)
        for index, (want, (_, utc)) in enumerate(zip(sent, batch, strict=True)):
            prompt, generation = stored[2 * index], stored[2 * index + 1]
            assert_llm_pair(prompt, generation, want, utc)

    check()
    assert_still_healthy(trip_node)


def assert_llm_pair(
    prompt: dict[str, Any], generation: dict[str, Any], want: dict[str, Any], utc: str | None
) -> None:
    """The two stored events of one LLM event, checked against the README's rules."""
    user = dict(want["properties"])
    if want.get("thread_id") is not None:
        user["$thread_id"] = want["thread_id"]
    assert prompt["properties"] == {
        "$text": want["prompt"],
        "$generation_id": generation["id"],
        **user,
    }
    assert generation["properties"] == {
        "$text": want["generation"],
        "$assistant_id": want.get("assistant_id"),
        "$prompt": want["prompt"],
        "latency(s)": want.get("latency"),
        "$prompt_id": prompt["id"],
        **user,
    }
    assert prompt["event"] == (want.get("prompt_event_name") or "Prompt")
    assert generation["event"] == (want.get("generation_event_name") or "Generation")
    for stored in (prompt, generation):
        assert stored["user_id"] == want["user_id"] and stored["source"] == "llm"
        assert thread_matches(user, stored["thread_id"])
    assert generation["timestamp"] == (utc or generation["received_at"])
    latency_us = round((want.get("latency") or 0) * 1_000_000)
    assert micros(generation["timestamp"]) - micros(prompt["timestamp"]) == latency_us


def micros(exported: str) -> int:
    return to_micros(datetime.strptime(exported, EXPORT_FORMAT))


# ---------------------------------------------------------------- regressions found by fuzzing


def test_huge_latency_does_not_block_later_events(node: Node) -> None:
    poison = [{"user_id": "u", "prompt": "p", "generation": "g", "latency": 1e300}]
    assert node.post("/publish_llm_events", poison).status_code in (200, 422)
    after = [{"user_id": "u", "event": "after", "timestamp": "2026-06-20T12:00:00Z"}]
    assert node.post("/publish_events", after).status_code == 200
    assert [e["event"] for e in node.export() if e["event"] == "after"] == ["after"]


def test_timestamp_past_the_range_edge_is_refused_and_export_still_works(node: Node) -> None:
    edge = [{"user_id": "u", "event": "e", "timestamp": "0001-01-01T00:00:00+01:00"}]
    assert node.post("/publish_events", edge).status_code == 422
    assert node.export() == []


def test_years_before_1000_export_with_four_digits(node: Node) -> None:
    early = [{"user_id": "u", "event": "e", "timestamp": "0999-06-01T00:00:00Z"}]
    assert node.post("/publish_events", early).status_code == 200
    (stored,) = node.export()
    assert stored["timestamp"] == "0999-06-01T00:00:00.000000Z"


def test_contract_and_server_agree_on_empty_event_names(node: Node) -> None:
    contract = requests.get(node.url + "/openapi.json", timeout=5).json()
    fields = contract["components"]["schemas"]["LLMEvent"]["properties"]
    for name in ("prompt_event_name", "generation_event_name"):
        item = {"user_id": "u", "prompt": "p", "generation": "g", name: ""}
        accepted = node.post("/publish_llm_events", [item]).status_code == 200
        assert accepted or fields[name].get("minLength", 0) >= 1, name


def test_a_multi_member_gzip_body_is_read_whole(node: Node) -> None:
    body = json.dumps([{"user_id": "u", "event": "e", "timestamp": "2026-06-20T12:00:00Z"}] * 2)
    half = len(body) // 2
    members = gzip.compress(body[:half].encode()) + gzip.compress(body[half:].encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    response = node.post("/publish_events", data=members, headers=headers)
    assert response.status_code == 200, response.text
    assert len(node.export()) == 2
