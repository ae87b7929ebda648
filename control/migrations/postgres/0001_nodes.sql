-- Nodes and their latest heartbeat. The registration document (networkInfo, capabilities,
-- location) and the metrics are JSON text; the columns beside them are what queries filter on.
-- Kept identical to ../sqlite/0001_nodes.sql until the dialects need to differ.
CREATE TABLE nodes (
    node_id            TEXT PRIMARY KEY,
    public_key         TEXT NOT NULL UNIQUE,
    generation         BIGINT NOT NULL,
    registration       TEXT NOT NULL,
    country            TEXT NOT NULL,
    region             TEXT NOT NULL,
    status             TEXT NOT NULL,
    reported_status    TEXT,
    metrics            TEXT,
    active_connections BIGINT NOT NULL DEFAULT 0,
    registered_at_ms   BIGINT NOT NULL,
    last_seen_ms       BIGINT NOT NULL
);

CREATE INDEX nodes_status_last_seen ON nodes (status, last_seen_ms);
CREATE INDEX nodes_region ON nodes (region);
