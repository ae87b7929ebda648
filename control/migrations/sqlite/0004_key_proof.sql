-- Proof of possession of the WireGuard key at registration: the challenges handed out and not
-- yet answered (single use: answering deletes the row; rows are pruned one nonce lifetime after
-- they expire, so an answer that is late is told so), and the deployment's secrets generated on
-- first start, shared by every host of the database (the key-proof X25519 key).
-- Kept identical to ../postgres/0004_key_proof.sql until the dialects need to differ.
CREATE TABLE key_proof_nonces (
    nonce         TEXT PRIMARY KEY,
    expires_at_ms BIGINT NOT NULL
);

CREATE INDEX key_proof_nonces_expiry ON key_proof_nonces (expires_at_ms);

CREATE TABLE deployment_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
