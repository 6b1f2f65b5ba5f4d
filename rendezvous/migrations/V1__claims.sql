-- Name claims: who owns which screen name. Every rule of a claim is kept
-- by the database itself (claim_name below, conditional statements in
-- src/cluster/claims.rs), so that nodes sharing it never hand one name
-- to two keys.
CREATE TABLE claims (
    name       text   PRIMARY KEY,
    -- The owner's peer id (its multihash bytes).
    owner      bytea  NOT NULL,
    -- Milliseconds since the Unix epoch.
    claimed_at bigint NOT NULL,
    last_seen  bigint,
    -- The last accepted sequence number, a u64 stored with its top bit
    -- flipped so that the whole u64 range orders as bigint does.
    seq        bigint NOT NULL,
    renewed_at bigint
);
CREATE INDEX claims_by_owner ON claims (owner);

-- Claims `p_name` for `p_owner`, or renews the owner's claim with a higher
-- `p_seq`, in one statement. A key holds at most `p_max` names: the names
-- of one key are counted and added under a lock of that key only.
CREATE FUNCTION claim_name(p_name text, p_owner bytea, p_seq bigint, p_now bigint, p_max integer)
RETURNS TABLE (outcome text, owner bytea, claimed_at bigint, last_seen bigint, seq bigint,
               renewed_at bigint, held bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    c claims%ROWTYPE;
    n bigint;
BEGIN
    LOOP
        UPDATE claims SET seq = p_seq, renewed_at = p_now
            WHERE name = p_name AND owner = p_owner AND seq < p_seq
            RETURNING * INTO c;
        IF FOUND THEN
            RETURN QUERY SELECT 'renewed'::text, c.owner, c.claimed_at, c.last_seen, c.seq,
                                c.renewed_at, 0::bigint;
            RETURN;
        END IF;
        SELECT * INTO c FROM claims WHERE name = p_name;
        IF FOUND THEN
            IF c.owner = p_owner AND c.seq < p_seq THEN
                CONTINUE; -- our own claim, made a moment ago: renew it
            END IF;
            RETURN QUERY SELECT CASE WHEN c.owner = p_owner THEN 'stale' ELSE 'taken' END,
                                c.owner, c.claimed_at, c.last_seen, c.seq, c.renewed_at, 0::bigint;
            RETURN;
        END IF;
        PERFORM pg_advisory_xact_lock(hashtextextended(encode(p_owner, 'hex'), 0));
        SELECT count(*) INTO n FROM claims WHERE owner = p_owner;
        IF n >= p_max THEN
            RETURN QUERY SELECT 'too_many'::text, NULL::bytea, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, n;
            RETURN;
        END IF;
        -- First claim wins: of two inserts of one name, the second waits
        -- for the first to commit and then does nothing.
        INSERT INTO claims (name, owner, claimed_at, last_seen, seq, renewed_at)
            VALUES (p_name, p_owner, p_now, NULL, p_seq, p_now)
            ON CONFLICT (name) DO NOTHING
            RETURNING * INTO c;
        IF FOUND THEN
            RETURN QUERY SELECT 'created'::text, c.owner, c.claimed_at, c.last_seen, c.seq,
                                c.renewed_at, 0::bigint;
            RETURN;
        END IF;
        -- Another key's claim committed in between: read it again.
    END LOOP;
END $$;
