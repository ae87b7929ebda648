-- The relay mesh: every BosonServer host registers itself in relay_hosts (its public record is
-- JSON text beside the columns queries filter on), relay_presence says which host a node holds
-- its relay session on (used when Redis is not configured), and nodes remember when their
-- current token expires, so that grants read back from here never outlive it.
-- Kept identical to ../sqlite/0002_relay_mesh.sql until the dialects need to differ.
CREATE TABLE relay_hosts (
    host_id           TEXT PRIMARY KEY,
    region            TEXT NOT NULL,
    record            TEXT NOT NULL,
    status            TEXT NOT NULL,
    started_at_ms     BIGINT NOT NULL,
    last_heartbeat_ms BIGINT NOT NULL
);

CREATE INDEX relay_hosts_status_heartbeat ON relay_hosts (status, last_heartbeat_ms);

CREATE TABLE relay_presence (
    node_id         TEXT PRIMARY KEY,
    host_id         TEXT NOT NULL,
    connected_at_ms BIGINT NOT NULL,
    expires_at_ms   BIGINT NOT NULL
);

CREATE INDEX relay_presence_host ON relay_presence (host_id, expires_at_ms);

ALTER TABLE nodes ADD COLUMN token_expires_ms BIGINT NOT NULL DEFAULT 0;
