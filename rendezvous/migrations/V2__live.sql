-- The cluster's live state: which node each online user is connected to,
-- and the record it registered there. Rows live as long as the session
-- that made them and the node that holds it.

-- Nodes announce themselves by beating here every two seconds; a node
-- whose beat is older than the cluster's grace is dead, and its rows
-- are ignored, then removed.
CREATE TABLE nodes (
    node    text        PRIMARY KEY,
    beat_at timestamptz NOT NULL
);

CREATE TABLE live (
    name       text   PRIMARY KEY,
    owner      bytea  NOT NULL,
    node       text   NOT NULL,
    -- The record's expiry, ms since the Unix epoch: an expired row is
    -- not served.
    expires_at bigint NOT NULL,
    -- The shared entry (signed record, who may see it when invisible),
    -- CBOR as in src/shared.rs.
    entry      bytea  NOT NULL
);
CREATE INDEX live_by_owner ON live (owner);
CREATE INDEX live_by_node ON live (node);
