-- terminal-gw fleet tables. Every record table is keyed by the payload's `id` (a UUIDv7), so a
-- record delivered twice is stored once. `time` is the device's time (GNSS or its system clock,
-- see `clock`), `received` when the ingest process took the message from the broker.

CREATE TABLE fixes (
    id         uuid PRIMARY KEY,
    device     text NOT NULL,
    time       timestamptz,
    received   timestamptz NOT NULL,
    mode       smallint NOT NULL,
    status     smallint,
    lat        double precision,
    lon        double precision,
    alt_hae    double precision,
    alt_msl    double precision,
    geoid_sep  double precision,
    speed      double precision,
    track      double precision,
    climb      double precision,
    magvar     double precision,
    eph        double precision,
    epv        double precision,
    hdop       double precision,
    vdop       double precision,
    pdop       double precision,
    nsat       smallint,
    usat       smallint,
    used       jsonb,
    clock      text NOT NULL,
    source     text NOT NULL          -- fix (one a message), fix_batch (JSON batch), wire (compact batch)
);
-- "track of device D between T1 and T2" and, scanned backwards, "last fix of device D".
CREATE INDEX fixes_device_time ON fixes (device, time);

-- The latest fix (by device time) with a position, one row per device: "where is everyone".
CREATE TABLE latest_fix (
    device     text PRIMARY KEY,
    id         uuid NOT NULL,
    time       timestamptz NOT NULL,
    received   timestamptz NOT NULL,
    mode       smallint NOT NULL,
    lat        double precision NOT NULL,
    lon        double precision NOT NULL,
    alt_msl    double precision,
    speed      double precision,
    track      double precision
);

CREATE TABLE sky_summary (
    id         uuid PRIMARY KEY,
    device     text NOT NULL,
    time       timestamptz,
    received   timestamptz NOT NULL,
    nsat       smallint NOT NULL,
    usat       smallint NOT NULL,
    hdop       double precision,
    vdop       double precision,
    pdop       double precision,
    clock      text NOT NULL,
    satellites jsonb,                 -- the list; NULL for a compact batch's summary
    seen       jsonb NOT NULL,        -- satellites in view per constellation: {"gps": 9, "bds": 12}
    used       jsonb NOT NULL         -- of them, used in the fix
);
CREATE INDEX sky_summary_device_time ON sky_summary (device, time);

-- SMS and BeiDou short messages, both directions; a sent message's progress (queued, sending,
-- sent, failed) is one row per report, tied together by `message_id`.
CREATE TABLE messages (
    id         uuid PRIMARY KEY,
    device     text NOT NULL,
    time       timestamptz,
    received   timestamptz NOT NULL,
    channel    text NOT NULL,         -- sms, bds
    direction  text NOT NULL,         -- rx, tx
    class      text NOT NULL,
    message_id text,                  -- tx: the id given in the send command
    peer       text,                  -- rx: sender; tx: recipient
    state      text,                  -- tx: queued, sending, sent, failed; rx: NULL
    text       text,
    payload    jsonb NOT NULL
);
CREATE INDEX messages_device_time ON messages (device, time);
CREATE INDEX messages_message_id ON messages (message_id) WHERE message_id IS NOT NULL;

CREATE TABLE events (
    id         uuid PRIMARY KEY,
    device     text NOT NULL,
    time       timestamptz,
    received   timestamptz NOT NULL,
    kind       text NOT NULL,
    severity   text NOT NULL,
    message    text NOT NULL,
    data       jsonb NOT NULL,
    clock      text NOT NULL
);
CREATE INDEX events_device_time ON events (device, time);

-- The latest retained status per device and topic (status, modem/status, rdss/status).
CREATE TABLE device_status (
    device     text NOT NULL,
    topic      text NOT NULL,
    id         uuid NOT NULL,
    time       timestamptz,
    received   timestamptz NOT NULL,
    class      text NOT NULL,
    state      text,
    payload    jsonb NOT NULL,
    PRIMARY KEY (device, topic)
);

CREATE TABLE command_results (
    id         uuid PRIMARY KEY,
    device     text NOT NULL,
    time       timestamptz,
    received   timestamptz NOT NULL,
    command    text NOT NULL,
    command_id text,
    ok         boolean NOT NULL,
    code       text,
    reason     text,
    result     jsonb NOT NULL
);
CREATE INDEX command_results_device_time ON command_results (device, time);

-- Messages that could not be stored: not JSON, failing their schema, an unknown class or
-- topic. The digest (SHA-256 of topic and payload) absorbs redeliveries of the same message.
CREATE TABLE rejected (
    digest     bytea PRIMARY KEY,
    received   timestamptz NOT NULL,
    topic      text NOT NULL,
    device     text,
    reason     text NOT NULL,
    payload    bytea NOT NULL
);
CREATE INDEX rejected_received ON rejected (received);
