-- Many claims in one statement, so one transaction and one commit: a node
-- sends together every claim that arrived while its last statement ran.
-- Each is claim_name's, in the order given; the node orders them by name
-- so that nodes take the locks of names they both claim in one order.
-- Rows come back numbered from 1 in that order.
CREATE FUNCTION claim_names(p_names text[], p_owners bytea[], p_seqs bigint[], p_nows bigint[],
                            p_maxes integer[])
RETURNS TABLE (k integer, outcome text, owner bytea, claimed_at bigint, last_seen bigint,
               seq bigint, renewed_at bigint, held bigint)
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_names, 1), 0) LOOP
        RETURN QUERY SELECT i, c.outcome, c.owner, c.claimed_at, c.last_seen, c.seq,
                            c.renewed_at, c.held
                     FROM claim_name(p_names[i], p_owners[i], p_seqs[i], p_nows[i], p_maxes[i]) AS c;
    END LOOP;
END $$;
