"""Amazon CloudWatch Logs (json protocol, target prefix Logs_20140328): groups, streams and events.

Other services write log lines in-process with `LogsBackend.append`, e.g.
    cloud.logs.append("/aws/sagemaker/TrainingJobs", f"{job}/algo-1-{epoch}", lines)

Reading follows CloudWatch's token semantics, which the Airflow amazon provider relies on: GetLogEvents
returns a `nextForwardToken` just after the last event it returned and the *same* token when nothing
new has arrived, which is how `AwsLogsHook.get_log_events` knows it has caught up.
"""

from __future__ import annotations

import base64
import re
import shlex
import time
from collections.abc import Callable, Iterable
from typing import Any

from localcloud.config import Config
from localcloud.service import Backend, Service, operation
from localcloud.store import Store
from localcloud.wire import Request, ServiceError

GROUP_KIND = "logs/group"  # key: group name
STREAM_KIND = "logs/stream"  # key: "<group>:<stream>" (neither name may contain ":")

MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26  # CloudWatch counts 26 bytes per event towards the batch size
MAX_EVENT_AGE_MS = 14 * 24 * 3600 * 1000
MAX_EVENT_FUTURE_MS = 2 * 3600 * 1000
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
DEFAULT_EVENT_LIMIT = 10_000

_GROUP_NAME = re.compile(r"[.\-_/#A-Za-z0-9]{1,512}")
_STREAM_NAME = re.compile(r"[^:*]{1,512}")
_TOKEN = re.compile(r"([fb])/(\d{20})/(\d{20})")

SCHEMA = """
CREATE TABLE IF NOT EXISTS log_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    log_group TEXT NOT NULL,
    log_stream TEXT NOT NULL,
    timestamp INTEGER NOT NULL,
    ingestion_time INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_events_by_stream ON log_events (log_group, log_stream, timestamp, id);
CREATE INDEX IF NOT EXISTS log_events_by_group ON log_events (log_group, timestamp, id);
"""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _invalid(message: str) -> ServiceError:
    return ServiceError("InvalidParameterException", message)


def _group_not_found() -> ServiceError:
    return ServiceError("ResourceNotFoundException", "The specified log group does not exist.")


class LogsBackend(Backend):
    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.config = config
        store.create_tables(SCHEMA)

    def counts(self) -> dict[str, int]:
        events = self.store.query("SELECT count(*) AS n FROM log_events")[0]["n"]
        return {
            "log_groups": self.store.count(GROUP_KIND),
            "log_streams": self.store.count(STREAM_KIND),
            "events": events,
        }

    def group_arn(self, group: str) -> str:
        return f"arn:aws:logs:{self.config.region}:{self.config.account_id}:log-group:{group}"

    # --- groups and streams ----------------------------------------------------------------------

    def create_log_group(self, group: str) -> None:
        if not _GROUP_NAME.fullmatch(group):
            raise _invalid(f"Log group name {group!r} must match [.-_/#A-Za-z0-9]{{1,512}}")
        if not self.store.insert(GROUP_KIND, group, {"created": now_ms(), "retention": None}):
            raise ServiceError("ResourceAlreadyExistsException", "The specified log group already exists")

    def group(self, group: str) -> dict[str, Any]:
        doc = self.store.get(GROUP_KIND, group)
        if doc is None:
            raise _group_not_found()
        return doc

    def put_retention_policy(self, group: str, days: int) -> None:
        with self.store.transaction():
            self.store.put(GROUP_KIND, group, {**self.group(group), "retention": days})

    def delete_log_group(self, group: str) -> None:
        with self.store.transaction():
            self.group(group)
            self.store.delete(GROUP_KIND, group)
            for key, _ in self.store.scan(STREAM_KIND, prefix=f"{group}:"):
                self.store.delete(STREAM_KIND, key)
            self.store.execute("DELETE FROM log_events WHERE log_group = ?", (group,))

    def create_log_stream(self, group: str, stream: str) -> None:
        if not _STREAM_NAME.fullmatch(stream):
            raise _invalid(f"Log stream name {stream!r} must be 1-512 characters without ':' or '*'")
        with self.store.transaction():
            self.group(group)
            if not self.store.insert(STREAM_KIND, f"{group}:{stream}", _new_stream()):
                raise ServiceError(
                    "ResourceAlreadyExistsException", "The specified log stream already exists"
                )

    def stream(self, group: str, stream: str) -> dict[str, Any]:
        doc = self.store.get(STREAM_KIND, f"{group}:{stream}")
        if doc is None:
            self.group(group)
            raise ServiceError("ResourceNotFoundException", "The specified log stream does not exist.")
        return doc

    def delete_log_stream(self, group: str, stream: str) -> None:
        with self.store.transaction():
            self.stream(group, stream)
            self.store.delete(STREAM_KIND, f"{group}:{stream}")
            self.store.execute(
                "DELETE FROM log_events WHERE log_group = ? AND log_stream = ?", (group, stream)
            )

    def describe_log_groups(
        self, prefix: str = "", pattern: str | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        groups = self.store.scan(GROUP_KIND, prefix=prefix)
        return [(name, doc) for name, doc in groups if pattern is None or pattern.lower() in name.lower()]

    def describe_log_streams(self, group: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        self.group(group)
        found = self.store.scan(STREAM_KIND, prefix=f"{group}:{prefix}")
        return [(key.split(":", 1)[1], doc) for key, doc in found]

    # --- writing events --------------------------------------------------------------------------

    def put_log_events(self, group: str, stream: str, events: list[tuple[int, str]]) -> dict[str, int]:
        """Validate a PutLogEvents batch as CloudWatch does and store it; returns rejectedLogEventsInfo."""
        if not 1 <= len(events) <= MAX_BATCH_EVENTS:
            raise _invalid(f"A PutLogEvents batch holds 1 to {MAX_BATCH_EVENTS} events, got {len(events)}")
        size = sum(len(message.encode()) + EVENT_OVERHEAD_BYTES for _, message in events)
        if size > MAX_BATCH_BYTES:
            raise _invalid(f"The batch of log events is {size} bytes; the maximum is {MAX_BATCH_BYTES}")
        stamps = [timestamp for timestamp, _ in events]
        if stamps != sorted(stamps):
            raise _invalid("Log events in a single PutLogEvents request must be in chronological order.")
        if stamps[-1] - stamps[0] > MAX_BATCH_SPAN_MS:
            raise _invalid(
                "The batch of log events in a single PutLogEvents request cannot span more than 24 hours."
            )
        now = now_ms()
        rejected: dict[str, int] = {}
        too_old = [i for i, stamp in enumerate(stamps) if stamp < now - MAX_EVENT_AGE_MS]
        too_new = [i for i, stamp in enumerate(stamps) if stamp > now + MAX_EVENT_FUTURE_MS]
        if too_old:
            rejected["tooOldLogEventEndIndex"] = too_old[-1]
        if too_new:
            rejected["tooNewLogEventStartIndex"] = too_new[0]
        dropped = set(too_old) | set(too_new)
        accepted = [event for i, event in enumerate(events) if i not in dropped]
        with self.store.transaction():
            self.stream(group, stream)
            self._insert(group, stream, accepted, now)
        return rejected

    def append(
        self, group: str, stream: str, messages: str | Iterable[str], timestamp_ms: int | None = None
    ) -> None:
        """Add log lines from inside localcloud, creating the group and stream when they are missing.

        Every message becomes one event stamped `timestamp_ms` (default: now).
        """
        lines = [messages] if isinstance(messages, str) else list(messages)
        if not lines:
            return
        now = now_ms()
        with self.store.transaction():
            self.store.insert(GROUP_KIND, group, {"created": now, "retention": None})
            self.store.insert(STREAM_KIND, f"{group}:{stream}", _new_stream())
            self._insert(group, stream, [(timestamp_ms or now, line) for line in lines], now)

    def _insert(self, group: str, stream: str, events: list[tuple[int, str]], ingested: int) -> None:
        key = f"{group}:{stream}"
        doc = self.store.get(STREAM_KIND, key) or _new_stream()
        if events:
            self.store.execute_many(
                "INSERT INTO log_events (log_group, log_stream, timestamp, ingestion_time, message) "
                "VALUES (?, ?, ?, ?, ?)",
                [(group, stream, timestamp, ingested, message) for timestamp, message in events],
            )
            stamps = [timestamp for timestamp, _ in events]
            first, last = doc.get("first_event"), doc.get("last_event")
            doc["first_event"] = min(stamps) if first is None else min(first, *stamps)
            doc["last_event"] = max(stamps) if last is None else max(last, *stamps)
            doc["last_ingestion"] = ingested
            doc["stored_bytes"] += sum(len(message.encode()) for _, message in events)
        doc["sequence"] += 1
        self.store.put(STREAM_KIND, key, doc)

    # --- reading events --------------------------------------------------------------------------

    def get_log_events(
        self,
        group: str,
        stream: str,
        *,
        start_time: int | None = None,
        end_time: int | None = None,
        token: str | None = None,
        limit: int = DEFAULT_EVENT_LIMIT,
        start_from_head: bool = False,
    ) -> tuple[list[dict[str, Any]], str, str]:
        """(events oldest first, nextForwardToken, nextBackwardToken) for one stream."""
        self.stream(group, stream)
        where = "log_group = ? AND log_stream = ? AND timestamp >= ?"
        args: list[Any] = [group, stream, start_time or 0]
        if end_time is not None:
            where += " AND timestamp < ?"
            args.append(end_time)
        position = _parse_token(token) if token else None
        if position is not None:
            direction, at = position
            forward = direction == "f"
        else:
            forward, at = start_from_head, None
        if at is not None:
            where += " AND (timestamp, id) > (?, ?)" if forward else " AND (timestamp, id) < (?, ?)"
            args.extend(at)
        order = "ASC" if forward else "DESC"
        rows = self.store.query(
            # Only fixed SQL fragments are formatted in; every value is a bound parameter.
            f"SELECT id, timestamp, ingestion_time, message FROM log_events WHERE {where} "  # noqa: S608
            f"ORDER BY timestamp {order}, id {order} LIMIT ?",
            (*args, limit),
        )
        if not forward:
            rows.reverse()
        events = [
            {"timestamp": r["timestamp"], "message": r["message"], "ingestionTime": r["ingestion_time"]}
            for r in rows
        ]
        if rows:
            first, last = (rows[0]["timestamp"], rows[0]["id"]), (rows[-1]["timestamp"], rows[-1]["id"])
            return events, _token("f", last), _token("b", first)
        if token:
            # Nothing new: hand back the caller's own token, which tells readers they have caught up.
            if forward:
                return events, token, _token("b", _after(at))
            return events, _token("f", _before(at)), token
        edge = (start_time or 0, 0)
        return events, _token("f", edge), _token("b", edge)

    def filter_log_events(
        self,
        group: str,
        *,
        stream_names: list[str] | None = None,
        stream_prefix: str | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        pattern: str | None = None,
        token: str | None = None,
        limit: int = DEFAULT_EVENT_LIMIT,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Events of a group in time order, across streams, matching a plain-term filter pattern.

        SQLite does the selecting (time range, streams, and the pattern's terms as `instr`, which is
        case-sensitive substring search like CloudWatch's), so a page reads only the rows it returns
        rather than every row of the group; the Python matcher still checks each row, the authority
        on what matches.
        """
        self.group(group)
        terms = parse_filter_pattern(pattern)
        matches = _matcher(terms)
        where = "log_group = ? AND timestamp >= ?"
        args: list[Any] = [group, start_time or 0]
        if end_time is not None:
            where += " AND timestamp < ?"
            args.append(end_time)
        if stream_names:
            where += f" AND log_stream IN ({', '.join('?' for _ in stream_names)})"
            args.extend(stream_names)
        if stream_prefix:
            where += " AND substr(log_stream, 1, ?) = ?"
            args.extend([len(stream_prefix), stream_prefix])
        pattern_sql, pattern_args = _filter_pattern_sql(terms)
        where += pattern_sql
        args.extend(pattern_args)
        cursor = _parse_token(token)[1] if token else (0, 0)
        events: list[dict[str, Any]] = []
        while True:
            # Rows come back already matching, so one chunk the size of what is left fills a page
            # (never under 1,000 rows: a small or out-of-range limit reads as it always did).
            chunk = max(limit - len(events), 1000)
            rows = self.store.query(
                "SELECT id, log_stream, timestamp, ingestion_time, message FROM log_events "  # noqa: S608
                f"WHERE {where} AND (timestamp, id) > (?, ?) ORDER BY timestamp, id LIMIT ?",
                (*args, *cursor, chunk),
            )
            for row in rows:
                cursor = (row["timestamp"], row["id"])
                if matches(row["message"]):
                    events.append(
                        {
                            "logStreamName": row["log_stream"],
                            "timestamp": row["timestamp"],
                            "message": row["message"],
                            "ingestionTime": row["ingestion_time"],
                            "eventId": f"{row['timestamp']:020d}{row['id']:020d}",
                        }
                    )
                    if len(events) == limit:
                        return events, _token("f", cursor)
            if len(rows) < chunk:
                return events, None


def _new_stream() -> dict[str, Any]:
    return {
        "created": now_ms(),
        "first_event": None,
        "last_event": None,
        "last_ingestion": None,
        "stored_bytes": 0,
        "sequence": 0,
    }


def _token(direction: str, position: tuple[int, int]) -> str:
    return f"{direction}/{position[0]:020d}/{position[1]:020d}"


def _parse_token(token: str) -> tuple[str, tuple[int, int]]:
    found = _TOKEN.fullmatch(token)
    if found is None:
        raise _invalid("The specified nextToken is invalid.")
    return found.group(1), (int(found.group(2)), int(found.group(3)))


def _before(position: tuple[int, int] | None) -> tuple[int, int]:
    timestamp, event_id = position or (0, 0)
    return timestamp, max(event_id - 1, 0)


def _after(position: tuple[int, int] | None) -> tuple[int, int]:
    timestamp, event_id = position or (0, 0)
    return timestamp, event_id + 1


FilterTerms = tuple[list[str], list[str], list[str]]  # (required, any of, excluded)


def parse_filter_pattern(pattern: str | None) -> FilterTerms:
    """The terms of CloudWatch's plain-term filter syntax: `ERROR`, `"exact phrase"`, `?a ?b`, `-noise`.

    JSON (`{ $.x = 1 }`) and space-delimited (`[ip, ...]`) patterns are refused rather than guessed.
    """
    if not pattern or not pattern.strip():
        return [], [], []
    if pattern.lstrip()[0] in "{[":
        raise _invalid(
            'localcloud supports only plain-term filter patterns (terms, "phrases", ?any, -exclude)'
        )
    try:
        terms = shlex.split(pattern)
    except ValueError as error:
        raise _invalid(f"Invalid filter pattern {pattern!r}: {error}") from None
    required = [t for t in terms if not t.startswith(("?", "-"))]
    any_of = [t[1:] for t in terms if t.startswith("?") and len(t) > 1]
    excluded = [t[1:] for t in terms if t.startswith("-") and len(t) > 1]
    return required, any_of, excluded


def compile_filter_pattern(pattern: str | None) -> Callable[[str], bool]:
    """A predicate for a plain-term filter pattern (see `parse_filter_pattern`)."""
    return _matcher(parse_filter_pattern(pattern))


def _matcher(terms: FilterTerms) -> Callable[[str], bool]:
    required, any_of, excluded = terms

    def matches(message: str) -> bool:
        return (
            all(term in message for term in required)
            and (not any_of or any(term in message for term in any_of))
            and not any(term in message for term in excluded)
        )

    return matches


def _filter_pattern_sql(terms: FilterTerms) -> tuple[str, list[str]]:
    """The same terms as SQL conditions on `message` (to AND onto a WHERE clause) and their values."""
    required, any_of, excluded = terms
    sql = " AND instr(message, ?) > 0" * len(required)
    if any_of:
        sql += f" AND ({' OR '.join('instr(message, ?) > 0' for _ in any_of)})"
    sql += " AND instr(message, ?) = 0" * len(excluded)
    return sql, [*required, *any_of, *excluded]


# --- wire --------------------------------------------------------------------------------------


def _page(items: list[Any], token: str | None, limit: int) -> tuple[list[Any], str | None]:
    """A page of an already ordered list; tokens are opaque offsets."""
    try:
        offset = int(base64.urlsafe_b64decode(token.encode())) if token else 0
    except ValueError:
        raise _invalid("The specified nextToken is invalid.") from None
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    return page, base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else None


class LogsService(Service):
    model_name = "logs"
    validation_error_code = "InvalidParameterException"
    backend: LogsBackend

    def _group_name(self, params: dict[str, Any]) -> str:
        identifier = params.get("logGroupName") or params.get("logGroupIdentifier")
        if not identifier:
            raise _invalid("Either logGroupName or logGroupIdentifier must be given")
        # An identifier may be the group's ARN, with or without the trailing ":*".
        return identifier.removesuffix(":*").split(":log-group:", 1)[-1]

    @operation("CreateLogGroup")
    def create_log_group(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.create_log_group(params["logGroupName"])
        return {}

    @operation("DeleteLogGroup")
    def delete_log_group(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_log_group(self._group_name(params))
        return {}

    @operation("PutRetentionPolicy")
    def put_retention_policy(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.put_retention_policy(self._group_name(params), params["retentionInDays"])
        return {}

    @operation("CreateLogStream")
    def create_log_stream(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.create_log_stream(params["logGroupName"], params["logStreamName"])
        return {}

    @operation("DeleteLogStream")
    def delete_log_stream(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        self.backend.delete_log_stream(params["logGroupName"], params["logStreamName"])
        return {}

    @operation("DescribeLogGroups")
    def describe_log_groups(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        groups = self.backend.describe_log_groups(
            params.get("logGroupNamePrefix", ""), params.get("logGroupNamePattern")
        )
        page, token = _page(groups, params.get("nextToken"), params.get("limit", 50))
        described = []
        for name, doc in page:
            stored = sum(stream["stored_bytes"] for _, stream in self.backend.describe_log_streams(name))
            arn = self.backend.group_arn(name)
            described.append(
                {
                    "logGroupName": name,
                    "creationTime": doc["created"],
                    "retentionInDays": doc["retention"],
                    "metricFilterCount": 0,
                    "arn": f"{arn}:*",
                    "logGroupArn": arn,
                    "storedBytes": stored,
                    "logGroupClass": "STANDARD",
                }
            )
        return {"logGroups": described, "nextToken": token}

    @operation("DescribeLogStreams")
    def describe_log_streams(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        group = self._group_name(params)
        prefix = params.get("logStreamNamePrefix", "")
        order_by = params.get("orderBy", "LogStreamName")
        if order_by == "LastEventTime" and prefix:
            raise _invalid("Cannot order by LastEventTime with a logStreamNamePrefix.")
        streams = self.backend.describe_log_streams(group, prefix)
        if order_by == "LastEventTime":
            streams.sort(key=lambda item: (item[1]["last_event"] or 0, item[0]))
        if params.get("descending"):
            streams.reverse()
        page, token = _page(streams, params.get("nextToken"), params.get("limit", 50))
        arn = self.backend.group_arn(group)
        described = [
            {
                "logStreamName": name,
                "creationTime": doc["created"],
                "firstEventTimestamp": doc["first_event"],
                "lastEventTimestamp": doc["last_event"],
                "lastIngestionTime": doc["last_ingestion"],
                "uploadSequenceToken": str(doc["sequence"]),
                "arn": f"{arn}:log-stream:{name}",
                "storedBytes": doc["stored_bytes"],
            }
            for name, doc in page
        ]
        return {"logStreams": described, "nextToken": token}

    @operation("PutLogEvents")
    def put_log_events(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        events = [(event["timestamp"], event["message"]) for event in params["logEvents"]]
        rejected = self.backend.put_log_events(params["logGroupName"], params["logStreamName"], events)
        sequence = self.backend.stream(params["logGroupName"], params["logStreamName"])["sequence"]
        return {"nextSequenceToken": str(sequence), "rejectedLogEventsInfo": rejected or None}

    @operation("GetLogEvents")
    def get_log_events(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        events, forward, backward = self.backend.get_log_events(
            self._group_name(params),
            params["logStreamName"],
            start_time=params.get("startTime"),
            end_time=params.get("endTime"),
            token=params.get("nextToken"),
            limit=params.get("limit", DEFAULT_EVENT_LIMIT),
            start_from_head=params.get("startFromHead", False),
        )
        return {"events": events, "nextForwardToken": forward, "nextBackwardToken": backward}

    @operation("FilterLogEvents")
    def filter_log_events(self, params: dict[str, Any], request: Request) -> dict[str, Any]:
        if params.get("logStreamNames") and params.get("logStreamNamePrefix"):
            raise _invalid("logStreamNames and logStreamNamePrefix cannot both be specified")
        events, token = self.backend.filter_log_events(
            self._group_name(params),
            stream_names=params.get("logStreamNames"),
            stream_prefix=params.get("logStreamNamePrefix"),
            start_time=params.get("startTime"),
            end_time=params.get("endTime"),
            pattern=params.get("filterPattern"),
            token=params.get("nextToken"),
            limit=params.get("limit", DEFAULT_EVENT_LIMIT),
        )
        return {"events": events, "nextToken": token}
