-- A node id registered again after its deletion used to start its generations over at 1, so
-- a token of the deleted registration could match the new one. New rows now number their
-- generations after the id's tombstones (`Store::insert`). This lifts the rows registered
-- again before that above their tombstones: their current tokens, which cannot be told apart
-- from the deleted registration's, are revoked, and those nodes register again. (Tombstones
-- are now kept at least as long as a token lives, not only twice the node timeout as 0003 says:
-- `registry::tombstone_retention`.)
-- The index serves that numbering, which reads the highest tombstone of one node id (a day of
-- tombstones with the default 24 h token TTL).
-- Kept identical to ../sqlite/0005_generations_after_tombstones.sql until the dialects need to differ.
CREATE INDEX IF NOT EXISTS node_deletions_node ON node_deletions (node_id, generation);

UPDATE nodes
SET generation = (SELECT MAX(d.generation) FROM node_deletions d WHERE d.node_id = nodes.node_id) + 1
WHERE generation <= (SELECT MAX(d.generation) FROM node_deletions d WHERE d.node_id = nodes.node_id);
