-- Deleted nodes, kept for a while after their row is gone, so that hosts sharing the store
-- learn of a deletion by reading what changed since their last sync, instead of re-reading
-- every live node. Pruned by the sweeper once older than twice the node timeout.
-- Kept identical to ../sqlite/0003_node_deletions.sql until the dialects need to differ.
CREATE TABLE node_deletions (
    node_id       TEXT NOT NULL,
    generation    BIGINT NOT NULL,
    deleted_at_ms BIGINT NOT NULL
);

CREATE INDEX node_deletions_at ON node_deletions (deleted_at_ms);
